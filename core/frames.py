"""What one network input is: the frame size every role agrees on.

The emulator makes these frames, the replay stores them, the networks read stacks of them.
"""

from __future__ import annotations

FRAME_SHAPE = (84, 84)  # grayscale pixels per frame, as in DQN and keras-rl's Atari example
WINDOW = 4  # frames per network input, as in DQN and keras-rl's examples
INPUT_SHAPE = (WINDOW, *FRAME_SHAPE)
