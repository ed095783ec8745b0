"""An entry point that is a factory function, not a class."""


class _Thing:
    def __init__(self, label):
        self.label = label

    def label_of(self):
        """Return the label given by the factory."""
        return self.label


def make_thing():
    return _Thing("made by a factory")
