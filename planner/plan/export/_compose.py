"""A docker compose file that runs an exported script in the engine's published image.

The script is mounted and run with `sh`, so the compose file holds no copy of the
launch: the model, address and settings stay the script's variables, set here through
`environment`. Compose interpolates `$` in values, so file names have theirs doubled.
"""

from __future__ import annotations

import yaml

from planner.plan.export._shell import comment_block

SCRIPT_IN_CONTAINER = "/specplan/launch.sh"


def compose_text(*, engine: str, display: str, image: str, port: int, env: dict[str, str], script_name: str) -> str:
    source = "./" + script_name.replace("$", "$$")
    service = {
        "image": image,
        "entrypoint": ["sh", SCRIPT_IN_CONTAINER],
        "environment": {"HF_TOKEN": "${HF_TOKEN:-}", "HOST": "0.0.0.0", "PORT": str(port), **env},
        "ports": [f"{port}:{port}"],
        "volumes": [
            {"type": "bind", "source": source, "target": SCRIPT_IN_CONTAINER, "read_only": True},
            {"type": "bind", "source": "${HOME}/.cache/huggingface", "target": "/root/.cache/huggingface"},
        ],
        "ipc": "host",
        "deploy": {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}},
    }
    if "GGUF_DIR" in env:
        service["volumes"].append({"type": "bind", "source": "./models", "target": env["GGUF_DIR"]})
    header = [f"docker compose file for {display}: runs {script_name} in {image}",
              "start: docker compose -f THIS_FILE up; set MODEL (and mount it) to serve a local checkpoint"]
    if "GGUF_DIR" in env:
        header.append(f"convert on the host first: GGUF_DIR=./models sh {script_name} convert")
    return comment_block(header) + yaml.safe_dump({"services": {engine: service}}, sort_keys=False)
