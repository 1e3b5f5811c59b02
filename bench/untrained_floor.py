"""The untrained floor: what freshly initialised networks score under the evaluation protocol.

Every published evaluation score stands beside this floor (docs/learning.md, "Evaluation
protocol"). For each network seed it builds the Q-network (``core.network``), saves it as a
keras-rl ``policy.h5`` (``core.policy_file``) and scores it with ``evaluate_policy_file``: the
evaluator's protocol and its default game seed, so every seed plays the same games.

    ./dqn python bench/untrained_floor.py                    # seeds 0-4, 10 games each, epsilon 0.05
    ./dqn play --weights runs/bench/untrained/policy-seed-0.h5 --episodes 10 --epsilon 0.05

Prints each network's mean, min and max, and over all games of all networks; --json writes them.
The policy files stay in --out for play.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--networks", type=int, default=5, help="networks, seeds SEED..SEED+N-1 (default: 5)")
    p.add_argument("--episodes", type=int, default=10, help="games per network (default: 10)")
    p.add_argument("--epsilon", type=float, default=0.05, help="epsilon of the games (default: 0.05)")
    p.add_argument("--game-seed", type=int, default=0,
                   help="evaluate_policy_file's seed: its default, 0, is the evaluator's (default: 0)")
    p.add_argument("--out", default="runs/bench/untrained", help="folder for the policy files (default: %(default)s)")
    args = common.parse(p, argv, seed="first network seed")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"untrained_floor.py: error: {out} is not empty; give a new --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    import kerasrl_compat

    tf = kerasrl_compat.load_tensorflow()
    from actors.evaluator import evaluate_policy_file
    from core.atari import EVAL_PROTOCOL
    from core.network import build_q_network
    from core.policy_file import save_policy

    machine = common.machine()
    common.print_machine(machine)
    print(f"{EVAL_PROTOCOL}: {args.episodes} games per network, epsilon {args.epsilon}, game seed {args.game_seed}")
    rows, every_score = [], []
    for seed in range(args.seed, args.seed + args.networks):
        tf.keras.utils.set_random_seed(seed)
        path = save_policy(build_q_network(4), out / f"policy-seed-{seed}.h5")
        start = time.perf_counter()
        ev = evaluate_policy_file(path, "Breakout", args.episodes, args.epsilon, seed=args.game_seed)
        every_score += ev["scores"]
        rows.append({"seed": seed, "file": str(path), "mean": ev["mean"], "min": ev["min"], "max": ev["max"],
                     "scores": ev["scores"], "game_steps": ev["game_steps"], "truncated": ev["truncated"]})
        print(f"network seed {seed}: mean {ev['mean']:.2f} (min {ev['min']:g}, max {ev['max']:g}), "
              f"{ev['truncated']} cut at the cap, {sum(ev['game_steps']):,} agent steps, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    means = [r["mean"] for r in rows]
    print(f"all {len(every_score)} games: mean {sum(every_score) / len(every_score):.2f} "
          f"(min {min(every_score):g}, max {max(every_score):g}); network means from {min(means):.2f} "
          f"to {max(means):.2f}; load {os.getloadavg()[0]:.2f}")
    common.write_json(args.json, {"machine": machine, "protocol": EVAL_PROTOCOL, "episodes": args.episodes,
                                  "epsilon": args.epsilon, "game_seed": args.game_seed, "networks": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
