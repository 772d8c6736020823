"""The Flower apps: a ClientApp that trains locally and a ServerApp that runs rounds.

The same two objects run under every engine: fedsec's in-process engine, Flower's
simulation engine (Ray) and Flower's deployment engine (SuperLink + SuperNodes).
Everything they need arrives in the Flower run config (the flat experiment config).
"""
