"""A cohort wrapper for tests: the real clients answer, a subclass changes what the round sees."""

from __future__ import annotations


class Relay:
    """Forwards everything to the wrapped cohort; subclasses override ``train`` to change the answers."""

    def __init__(self, inner):
        self.inner = inner

    def declared_samples(self, client):
        return self.inner.declared_samples(client)

    def key_holder(self, rnd):
        return self.inner.key_holder(rnd)

    def train(self, rnd, clients, down, task):
        return self.inner.train(rnd, clients, down, task)
