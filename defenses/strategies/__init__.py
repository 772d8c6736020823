"""One Flower strategy per defense: a thin :class:`~defenses.adapter.DefenseStrategy`
that builds its rule from the defense's parameters."""
