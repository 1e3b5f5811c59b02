"""The Ray program behind ``launch.py``: one module per concern.

- ``raystart``: the one way this project starts or joins Ray (launch.py, bench/ and tests/);
- ``preflight``: every check before work starts (flags, memory fit, resume merge, cluster probe, a
  cluster head's memory);
- ``topology``: which actor runs where, with which Ray options (replay, learner, explorers,
  evaluator), the one place bench/ and tests/ build them too;
- ``placement``: the CPUs each explorer reserves, the learner's node and threads, and the line
  while explorers wait for nodes;
- ``pacer``: the replay-ratio arithmetic, plain Python;
- ``driver``: the loop that issues explorer and learner calls and handles their results;
- ``evaluation``: when evaluations run and what happens to their results;
- ``runlog``: progress lines, TensorBoard, metrics.jsonl, episodes.csv, evaluations.csv;
- ``checkpoint``: checkpoint.npz, the state ``--resume`` continues from;
- ``views``: the run folder's pictures (evaluation GIFs, the learning curve) and their TensorBoard images;
- ``disk``: a failed write into the run folder (a full disk), said in one line with what is whole.

Roles (``actors/``, ``learner/``, ``replay/``) never import this package; it imports them.
"""


class LaunchError(Exception):
    """Bad input found before any work starts: one line for the user, exit status 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none): Ray's errors carry
    the remote traceback below it, which a progress line must not print."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
