"""3D-CDI-NN: the network, its physics-aware loss, training and shipped weights."""
