"""Networks: `config.py` (the network configs, free of JAX), `network.py` (the Scaled QL network family:
`build_network`, typed outputs, parameter tables), one module per torso and the Decision Transformer."""
