"""A minimal Flower App: sklearn digits, a tiny MLP, fedsec's Multi-metrics strategy."""
