"""Training (torch), in the order a run meets it: the config and recipes (``config``), the data
(``data_prep``, ``balance``), the steps measured before training (``budget``), the run's state
(``run_state``), ``train()`` and its epoch loop (``trainer``, over ``engine``'s
``train_one_epoch``), resuming (``resume``), what the run says (``banner``), its folder
(``run_folder``), Ctrl-C (``stop``) and torchrun (``distributed``).
"""
