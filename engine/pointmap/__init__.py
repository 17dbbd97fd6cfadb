"""The pointmap network: a DUSt3R / MASt3R-compatible pair predictor that loads the official checkpoints.

For an image pair (i, j) it predicts two dense pointmaps, both in camera i's frame (OpenCV axes), and their
confidences. Modules: `config` (architecture description), `rope` (2D rotary position embedding), `model`
(encoder and the two decoders), `heads` (linear, DPT, MASt3R local features), `checkpoint` (safe loading of
the `.pth` and Hugging Face layouts), `preprocess` (the reference's resize/crop and the map back to the original
pixels) and `infer` (batched pair inference). Importing this package does not import torch.
"""
