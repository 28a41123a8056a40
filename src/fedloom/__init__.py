"""fedloom: a federated-learning lab (horizontal FL, compression, homomorphic encryption)."""

__version__ = "0.1.0"
