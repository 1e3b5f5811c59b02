"""Raw Atari emulator speed on one core: the physical limit for acting, and what our preprocessing costs.

Four loops, all Breakout, random actions, one agent step = 4 emulator frames, pinned to one core
and interleaved round by round (so load from other processes falls on all of them alike):

  ale      ale_py ALEInterface, act() x4 per step, no screen read: the physical limit
  gym      gymnasium ALE/Breakout-v5 (frameskip=4, repeat_action_probability=0, obs_type rgb)
  ours     core.atari.make_env(training=True): max-pooled skip, 84x84 gray (Pillow), episodic life
  alevec   ale-py's C++ AtariVectorEnv, 32 envs, one thread, the same preprocessing done in C++:
           the library alternative to our env (its resize is not Pillow's, so its pixels differ)

Reference target: ours >= 60% of the raw rate, a prerequisite of the explorer's target
(bench/actor.py: at least 60% of the raw emulator rate per core with inference included).

    ./dqn bench/emulator.py                     # about 30 s
    ./dqn bench/emulator.py --rounds 5 --json runs/bench/emulator.json
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

TARGET = 0.60


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--seconds", type=float, default=3.0,
                   help="seconds per timed measurement of each loop (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds; the median is reported (default: %(default)s)")
    p.add_argument("--core", type=int, default=0,
                   help="CPU core to pin this process to; -1: no pinning (default: %(default)s)")
    p.add_argument("--profile", action="store_true",
                   help="also print a cProfile of our env's step (where the preprocessing time goes)")
    args = common.parse(p, argv, seed="emulator and action seed")

    cores = common.pin([args.core] if args.core >= 0 else None)
    m = common.machine()
    common.print_machine(m)
    print(f"pinned to cores {cores}; {args.rounds} rounds x {args.seconds:g} s per loop")
    res = common.interleave(
        {"ale": common.ale_direct(args.seed), "gym": common.gym_raw(args.seed), "ours": common.ours_env(args.seed),
         "alevec": common.ale_vector(args.seed)},
        args.rounds, args.seconds, log=print,
    )
    cpu = {k: res[k]["cpu"]["median"] for k in res}
    wall = {k: res[k]["wall"]["median"] for k in res}
    ale, gym, ours = cpu["ale"], cpu["gym"], cpu["ours"]
    print("ratios are per CPU second of this pinned process (the per-core figure); wall-clock ratios in brackets")
    print(common.rate_line("raw ALE act() x4 (physical limit)", res["ale"]))
    print(common.rate_line("raw gymnasium ALE/Breakout-v5 rgb", res["gym"],
                           extra=f"= {gym / ale:.2f} x ALE [{wall['gym'] / wall['ale']:.2f}]"))
    print(common.rate_line("ours, make_env(training=True), 84x84", res["ours"],
                           extra=f"= {ours / ale:.2f} x ALE [{wall['ours'] / wall['ale']:.2f}], "
                                 f"{ours / gym:.2f} x gym [{wall['ours'] / wall['gym']:.2f}]"))
    alevec = cpu["alevec"]
    print(common.rate_line("ale-py AtariVectorEnv x32, 84x84", res["alevec"],
                           extra=f"= {alevec / ale:.2f} x ALE [{wall['alevec'] / wall['ale']:.2f}], "
                                 f"{alevec / ours:.2f} x ours [{wall['alevec'] / wall['ours']:.2f}]"))
    ok = ours / ale >= TARGET
    print(f"target (prerequisite of the explorer's): ours >= {TARGET:.0%} of raw ALE per core: {ours / ale:.0%}  "
          f"{common.verdict(ok)}")

    result = {"machine": m, "cores": cores, "seconds": args.seconds, "rounds": args.rounds, "steps_per_s": res,
              "ratio_ours_to_ale": ours / ale, "ratio_ours_to_gym": ours / gym, "ratio_gym_to_ale": gym / ale,
              "ratio_alevec_to_ale": alevec / ale, "ratio_alevec_to_ours": alevec / ours,
              "wall_ratio_ours_to_ale": wall["ours"] / wall["ale"], "ratio_basis": "per CPU second, pinned",
              "target": TARGET, "pass": ok}
    if args.profile:
        result["profile"] = profile_ours(args.seed)
    common.write_json(args.json, result)
    return result


def profile_ours(seed: int, seconds: float = 3.0) -> str:
    """cProfile of our env's step loop: top functions by own time."""
    run = common.ours_env(seed)
    prof = cProfile.Profile()
    prof.enable()
    run(seconds)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    text = out.getvalue()
    print("profile of ours (cProfile adds overhead; look at the shares):")
    print("\n".join(line for line in text.splitlines() if line.strip())[:4000])
    return text


if __name__ == "__main__":
    main()
