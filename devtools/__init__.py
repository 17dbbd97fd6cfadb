"""Developer tools run from the repository (not part of the extension build): the end-to-end demo
(`python -m devtools.demo`) and the extension validator/builder (`python -m devtools.extension`)."""
