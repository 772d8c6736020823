"""fedsec: federated-learning security research on Flower.

Simulate federated learning with non-IID clients, attack it, defend it and repair it.
"""

__version__ = "0.1.0"
