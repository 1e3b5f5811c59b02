"""The ground floor: what every role shares and no role owns.

Frame constants, the Atari environment, the Q-network, the ``policy.h5`` file format and
atomic writes. Modules here import nothing from ``actors/``, ``learner/``, ``replay/`` or
``distributed/``, so any role can use them without loading another role (the learner does not
load the emulator for two constants). ``tests/test_layout.py`` keeps it so.
"""
