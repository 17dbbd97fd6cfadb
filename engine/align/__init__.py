# SPDX-License-Identifier: GPL-3.0-or-later
"""Global alignment of pairwise pointmaps (DUSt3R-style) into cameras, depth maps and a fused point cloud.

    graph.py     pair graphs (make_pairs: complete / swin-K / logwin-K / oneref-K), components, spanning tree
    sample.py    the problem: every edge of the aligned images, sampled on a shared pixel grid
    init.py      maximum-spanning-tree initialisation (weighted Procrustes, PnP-RANSAC, Weiszfeld focal)
    optimize.py  the objective and its Adam minimisation, vectorised over edges (CPU or CUDA)
    fuse.py      full-resolution depth and confidence maps, voxel-merged coloured point cloud
    aligner.py   align(pairs_file, AlignOptions, Known, colours, progress) -> AlignResult: all of the above
    scene.py     an AlignResult as a scene bundle (cameras in photo pixels, depth/confidence .npy files)
"""
