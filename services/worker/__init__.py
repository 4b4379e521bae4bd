"""Workers: inference (3D-CDI-NN on partial and final scans) and refinement (AD), sharing queues."""
