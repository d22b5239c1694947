"""Training: the config and recipes, data preparation, train() and its epoch loop, stopping,
the run folder, torchrun (torch).
"""
