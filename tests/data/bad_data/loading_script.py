import datasets


class Squad(datasets.GeneratorBasedBuilder):
    pass
