"""The network: the official code's ResNet family (WRN-28-2, WRN-28-8, the STL-10 network)."""
