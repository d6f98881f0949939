"""A judge that asks a language model behind an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI,
llama.cpp, ...), the way the paper's GPT-4 win rates were measured.

The API key is read from the environment variable named in the config at request time, never stored on the judge,
so it cannot reach a log, a saved config or a checkpoint. Every message the judge produces shows the endpoint with
its credentials masked (a password in ``user:pass@host``, ``?key=`` and similar query parameters) and never the
key itself.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from lit_align.errors import UserError
from lit_align.evaluation.judges import Judge, Verdict
from lit_align.runs.secrets import key_as_name_message, looks_like_key, mask_url, redact

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = """Which of the two responses below is the better response to the prompt? A better response \
is accurate, helpful and to the point; do not prefer a response for being longer.

Prompt:
{prompt}

Response A:
{a}

Response B:
{b}

First compare the two responses in one sentence. Then, on a new line, write "Preferred:" followed by only "A" or \
"B"."""

_VERDICT = re.compile(r"Preferred:\s*[*\"']*\s*([AB])\b")


class JudgeSetupError(UserError, RuntimeError):
    """The judge cannot run as configured: its API key is missing, or a key was given where its variable's name
    belongs."""


class LLMJudge(Judge):
    """Asks a chat model which of response and reference is better, showing them in a random (seeded) order so
    that a judge's preference for the first or second position averages out.

    Args:
        base_url: Endpoint root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``;
            requests go to ``{base_url}/chat/completions`` (a query string, e.g. ``?api-version=...``, is kept
            at the end). ``user:password@`` in it is sent as HTTP basic authentication.
        model: The judge model's name at that endpoint, e.g. ``gpt-4o``.
        api_key_env: Name of the environment variable holding the API key (sent as a Bearer token), e.g.
            ``OPENAI_API_KEY``, never the key itself (a value that looks like a key is refused, without showing
            it); ``null`` for endpoints without authentication.
        template: The question, with ``{prompt}``, ``{a}`` and ``{b}`` placeholders; it must ask for a final line
            ``Preferred: A`` or ``Preferred: B``.
        system_prompt: Optional system message.
        max_tokens: Longest judge reply.
        temperature: Judge sampling temperature (0 for repeatable verdicts).
        timeout: Seconds to wait for one reply.
        max_retries: Retries of a request that failed with a connection error, 429 or 5xx, with exponential backoff.
        concurrency: Requests in flight at once.
        seed: Seed of the A/B order.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        template: str = DEFAULT_TEMPLATE,
        system_prompt: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 4,
        seed: int = 0,
    ) -> None:
        for field in ("{prompt}", "{a}", "{b}"):
            if field not in template:
                raise ValueError(f"the judge template must contain {field}")
        if api_key_env is not None and looks_like_key(api_key_env):
            raise JudgeSetupError(key_as_name_message("judge.api_key_env"))
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.template = template
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = max(1, concurrency)
        self._rng = random.Random(seed)
        self.unparsed = 0

    def setup(self, device) -> None:
        self._headers()  # fail before sampling anything when the key is missing

    def compare(self, prompt: str, response: str, reference: str) -> Verdict:
        return self.compare_batch([prompt], [response], [reference])[0]

    def compare_batch(self, prompts: list[str], responses: list[str], references: list[str]) -> list[Verdict]:
        swaps = [self._rng.random() < 0.5 for _ in prompts]  # drawn up front: the order is seeded, not racy
        jobs = [
            (p, ref, r) if swap else (p, r, ref) for p, r, ref, swap in zip(prompts, responses, references, swaps)
        ]
        with ThreadPoolExecutor(self.concurrency) as pool:
            choices = list(pool.map(lambda job: self.choose(*job), jobs))
        verdicts = []
        for choice, swap in zip(choices, swaps):
            if choice is None:
                verdicts.append(Verdict(0.5))
            else:
                response_is_a = not swap
                verdicts.append(Verdict(1.0 if (choice == "A") == response_is_a else 0.0))
        return verdicts

    def choose(self, prompt: str, a: str, b: str) -> str | None:
        """``"A"``, ``"B"``, or ``None`` when the reply names neither (counted in ``unparsed``, scored a tie)."""
        messages = [{"role": "user", "content": self.template.format(prompt=prompt, a=a, b=b)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        reply = self._post({
            "model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": self.temperature,
        })
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise RuntimeError(self._mask(
                f"unexpected reply from the judge endpoint {mask_url(self.base_url)}: {str(reply)[:200]}")) from None
        found = _VERDICT.findall(text)
        if not found:
            last = text.strip().splitlines()[-1].strip(" *.\"'") if text.strip() else ""
            found = [last] if last in ("A", "B") else []
        if not found:
            self.unparsed += 1
            log.warning("the judge named no winner (scored as a tie): %s", self._mask(repr(text[-200:])))
            return None
        return found[-1]

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        user, password = self._userinfo()
        if user is not None:
            credentials = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeSetupError(f"the judge needs an API key: set the environment variable {self.api_key_env} "
                                      f"to the API key of {mask_url(self.base_url)} (judge.api_key_env), or set "
                                      "judge.api_key_env to null for an endpoint without authentication")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _userinfo(self) -> tuple[str | None, str | None]:
        parts = urllib.parse.urlsplit(self.base_url)
        return parts.username, parts.password

    def _url(self) -> str:
        """``{base_url}/chat/completions`` with the query string kept last and any ``user:password@`` removed
        (it travels in the Authorization header instead)."""
        parts = urllib.parse.urlsplit(self.base_url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        path = parts.path.rstrip("/") + "/chat/completions"
        return urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))

    def _mask(self, text: str) -> str:
        """``text`` with the endpoint's credentials and the API key masked."""
        url = self._url()
        text = text.replace(self.base_url, mask_url(self.base_url)).replace(url, mask_url(url))
        user, password = self._userinfo()
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return redact(text, extra=tuple(s for s in (key, password) if s and len(s) >= 4))

    def _post(self, payload: dict) -> dict:
        body = json.dumps(payload).encode("utf-8")
        url = self._url()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=body, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return json.loads(reply.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                retry = err.code == 429 or err.code >= 500
                error = f"HTTP {err.code} {err.reason}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                retry, error = True, f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if not retry or attempt == self.max_retries:
                # `from None`: the chained urllib error would print the raw URL in a traceback
                raise RuntimeError(self._mask(f"judge request to {url} failed: {error}")) from None
            time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")
