"""`python -m models [--force]`: install and verify every embedded model; exit 1 on a problem."""

import sys

from models.registry import load_manifest, status


def main(argv: list[str]) -> int:
    force = "--force" in argv
    bad = 0
    for spec in load_manifest():
        st = status(spec, force=force)
        mark = "ok " if st.ok else "BAD"
        print(f"{mark} {spec.stage:4} {spec.name:14} {spec.package} {spec.version}  {st.path}")
        for p in st.problems:
            print(f"      {p}")
        bad += not st.ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
