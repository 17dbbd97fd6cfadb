# SPDX-License-Identifier: GPL-3.0-or-later
"""Photos (or a video's frames) to a scene bundle: calibrated cameras, poses and points.

Modules: `images` (finding, measuring and uprighting the input photos; decoding video frames), `colmap_backend`
(the weights-free path: SIFT features, matching and incremental mapping with pycolmap on the CPU),
`pointmap_backend` (pairwise pointmaps from the network, then the global aligner), `pipeline` (choosing the
backend and writing the bundle) and `compare` (errors of a reconstruction against known cameras). Importing this
package imports neither pycolmap nor torch.
"""
