"""Per-render cost of the two template paths: the in-process fast path (a template that only reads
values) and the isolated path (worker processes with a time limit). Prints figures, asserts nothing."""

from __future__ import annotations

import time

from controller.engine import templating
from controller.operator.template_sandbox import TemplateSandbox

CONTEXT = {"params": {"x": "prod-db", "n": 3}, "steps": {"a": {"outputs": {"path": "db/prod-db.json"}}}}


def per_call(source: str, n: int) -> float:
    templating.render(source, CONTEXT)  # warm: the verdict and the compiled template are cached
    started = time.perf_counter()
    for _ in range(n):
        templating.render(source, CONTEXT)
    return (time.perf_counter() - started) / n


def main() -> None:
    for source in ("{{ params.x }}", "db/{{ steps.a.outputs.path }}"):
        print(f"fast path      {source!r:40} {per_call(source, 20000) * 1e6:8.1f} µs")
    with TemplateSandbox() as sandbox:
        started = time.perf_counter()
        sandbox.start()
        previous = templating.install(sandbox)
        templating.render("{{ params.n + 1 }}", CONTEXT)
        print(
            f"isolated path  pool start and first render                {(time.perf_counter() - started) * 1e3:8.1f} ms"
        )
        for source in ("{{ params.n + 1 }}", "{% for i in range(10) %}{{ i }}{% endfor %}"):
            print(f"isolated path  {source!r:40} {per_call(source, 300) * 1e3:8.2f} ms")
        templating.install(previous)


if __name__ == "__main__":
    main()
