"""Real agent clients through the Responses bridge, against a scripted model that runs
the client's shell tool and then answers (``tests/agent_model.py``), on a chat-only
target and on an Anthropic-format target: the Codex CLI (``codex exec``, with the
documented config, docs/api.md, and no feature flags), the Vercel AI SDK (its default
OpenAI provider: Responses, ``store`` on) and the OpenAI Agents SDK with
``previous_response_id``.

The JavaScript clients are installed by ``scripts/test`` into ``tests/clients``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from tests.agent_model import ANSWER_PREFIX, agent_chat, agent_messages
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway

CLIENTS = Path(__file__).parent / "clients"
BIN = CLIENTS / "node_modules" / ".bin"
TOKEN = "agent-clients-token"

ALIASES = """
defaults: {retries: 0}
providers:
  chatonly: {base_url: "BASE/v1", responses: bridge}
aliases:
  agent-chat: chatonly:agent
  agent-claude: anthropic:agent-claude
  gpt-5.5: chatonly:agent
"""


def _needs(tool: Path) -> None:
    if not tool.exists():
        pytest.fail(f"{tool} is missing: scripts/test installs it (npm, in tests/clients)")


@pytest.fixture
def gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    fake.on("agent", agent_chat)
    fake.on("agent-claude", agent_messages)
    return make_gateway(
        ALIASES.replace("BASE", fake.url),
        env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url},
        service_token=TOKEN,
    )


def readme_codex_config(base_url: str, model: str) -> str:
    """The ``~/.codex/config.toml`` of docs/api.md, its model and address filled in."""
    readme = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    block = readme.split("The Codex CLI, in `~/.codex/config.toml`", 1)[1]
    toml = block.split("```toml\n", 1)[1].split("```", 1)[0]
    toml = toml.replace("http://127.0.0.1:4001/v1", base_url)
    return toml.replace('model = "smart"', f'model = "{model}"')


# gpt-5.5: a name Codex knows, for which it also sends the free-form apply_patch tool,
# a client-run tool search and web search.
@pytest.mark.parametrize("alias", ["agent-chat", "agent-claude", "gpt-5.5"])
def test_codex_exec_runs_a_command_and_answers(
    gateway: Gateway, fake: FakeProvider, tmp_path: Path, alias: str
) -> None:
    codex = BIN / "codex"
    _needs(codex)
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(readme_codex_config(gateway.base_url, alias))
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CODEX_HOME": str(home),
        "RUNESTONE_SERVICE_TOKEN": TOKEN,
    }
    done = subprocess.run(
        [
            str(codex),
            "exec",
            "--skip-git-repo-check",
            "Work out six times seven with the shell.",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert ANSWER_PREFIX in done.stdout, done.stdout + done.stderr[-2000:]
    assert "42" in done.stdout.split(ANSWER_PREFIX, 1)[1]
    # The model saw the command's output: it ran.
    turns = [s for s in fake.seen if s.body.get("model") in ("agent", "agent-claude")]
    assert len(turns) >= 2
    last = turns[-1].body
    sent = str(last.get("messages"))
    assert "42" in sent
    offered = [t.get("name") or t["function"]["name"] for t in turns[0].body["tools"]]
    if alias == "gpt-5.5":  # free-form and client-run tools, as functions
        assert {"apply_patch", "tool_search", "exec_command"} <= set(offered)
    else:  # Codex's namespace of sub-agent tools, flattened
        assert "multi_agent_v1__spawn_agent" in offered
    assert not any("web_search" in name for name in offered)


def _ai_sdk(gateway: Gateway, alias: str, stream: bool) -> dict[str, object]:
    node = shutil.which("node")
    assert node is not None, "node is needed: scripts/test installs it"
    _needs(CLIENTS / "node_modules" / "ai")
    env = {
        "PATH": os.environ["PATH"],
        "RUNESTONE_BASE_URL": gateway.base_url,
        "RUNESTONE_TOKEN": TOKEN,
        "RUNESTONE_MODEL": alias,
        "RUNESTONE_STREAM": "1" if stream else "0",
    }
    done = subprocess.run(
        [node, str(CLIENTS / "ai_sdk_loop.mjs")],
        cwd=CLIENTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("alias", ["agent-chat", "agent-claude"])
def test_the_ai_sdk_runs_a_three_step_tool_loop_with_store_on(
    gateway: Gateway, fake: FakeProvider, alias: str, stream: bool
) -> None:
    result = _ai_sdk(gateway, alias, stream)
    assert result["steps"] == 3
    assert [str(o).strip() for o in result["toolResults"]] == ["42", "42"]  # type: ignore[attr-defined]
    assert str(result["text"]).endswith(ANSWER_PREFIX + "42")  # streamed: every step's text
    # The SDK referred to its earlier output by id; the gateway filled the items in.
    turns = [s for s in fake.seen if s.body.get("model") in ("agent", "agent-claude")]
    assert len(turns) == 3


@pytest.mark.parametrize("alias", ["agent-chat", "agent-claude"])
def test_the_agents_sdk_continues_a_run_by_previous_response_id(
    gateway: Gateway, fake: FakeProvider, alias: str
) -> None:
    agents = pytest.importorskip("agents")
    ran: list[str] = []

    @agents.function_tool
    def exec_command(cmd: str) -> str:
        """Run a shell command; returns what it printed."""
        ran.append(cmd)
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout

    async def run() -> tuple[str, str]:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=TOKEN, max_retries=0)
        try:
            model = agents.OpenAIResponsesModel(model=alias, openai_client=sdk)
            agent = agents.Agent(name="runner", tools=[exec_command], model=model)
            first = await agents.Runner.run(agent, "Work out six times seven.")
            second = await agents.Runner.run(
                agent, "Say it again.", previous_response_id=first.last_response_id
            )
            return str(first.final_output), str(second.final_output)
        finally:
            await sdk.close()

    agents.set_tracing_disabled(True)
    first, second = asyncio.run(run())
    assert ran == ["echo $((6*7))"]
    assert first == second == ANSWER_PREFIX + "42"
    # The second run sent only its new message and the id; the model saw it all.
    last = str(fake.seen[-1].body["messages"])
    assert "Work out six times seven." in last and "Say it again." in last
