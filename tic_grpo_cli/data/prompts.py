"""From an example's prompt field to the text the model is fed: template, system prompt,
chat template (its ids: `encoding.prompt_ids`).

Templates substitute ``{field}`` only. ``str.format`` would choke on the braces that math
prompts are full of (``\\boxed{}``), so any other brace text is kept as written and ``{{``
``}}`` stand for literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from tic_grpo_cli.encoding import ChatPrompt
from tic_grpo_cli.errors import UserError

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")
Prompt = str | list[dict[str, Any]]  # plain text, or chat messages (verl files)


def template_fields(template: str) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)}


def fill(template: str, fields: dict[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        token, name = match.group(), match.group(1)
        if name is None:
            return token[0]  # `{{` -> `{`, `}}` -> `}`
        return str(fields[name]) if name in fields else token

    return _PLACEHOLDER.sub(replace, template)


def prompt_text(prompt: Prompt) -> str:
    """The text a template's ``{prompt}`` stands for: a chat prompt's last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
    return str(users[-1]["content"])


class PromptRenderer:
    """Renders prompts for one task and tokenizer; checks the config once, up front."""

    def __init__(self, cfg: Any, tokenizer: Any, fields: Collection[str], where: str):
        self.template = str(cfg.prompt_template)
        self.system_prompt = cfg.system_prompt
        used = template_fields(self.template)
        if "answer" in used:
            raise UserError(
                "dataset.prompt_template: {answer} would show the reference answer in the "
                "prompt; write {{answer}} for the literal text"
            )
        unknown = sorted(used - set(fields) - {"prompt"})
        if unknown:
            raise UserError(
                f"dataset.prompt_template: no field {unknown[0]!r} in {where}; fields: "
                f"{', '.join(sorted(set(fields) | {'prompt'}))} (write {{{{ }}}} for literal braces)"
            )
        mode = str(cfg.use_chat_template).lower()
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if mode == "true" and not has_template:
            raise UserError(
                "dataset.use_chat_template: true, but the model's tokenizer has no chat "
                "template; set it to auto or false"
            )
        self.chat_tokenizer = tokenizer if has_template and mode in ("true", "auto") else None

    def _template_error(self, err: Exception) -> UserError:
        """A template that refuses a prompt, in one line naming the key that avoids it: a
        system turn (Gemma's template raises on one) or the chat template itself."""
        name = getattr(self.chat_tokenizer, "name_or_path", "") or "the model"
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f"the chat template of {name} refuses this prompt ({detail})"
        if self.system_prompt:
            return UserError(
                f"dataset.system_prompt: {where}; if the template takes no system turn (as "
                "Gemma's), drop dataset.system_prompt and put the text in "
                "dataset.prompt_template, or set dataset.use_chat_template=false"
            )
        return UserError(
            f"dataset.use_chat_template: {where}; fix the prompts (a system turn some "
            "templates refuse?) or set dataset.use_chat_template=false to feed their text as is"
        )

    def __call__(self, prompt: Prompt, fields: dict[str, Any]) -> str:
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        turn = max(
            (i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1
        )
        messages[turn]["content"] = fill(
            self.template, {**fields, "prompt": messages[turn]["content"]}
        )
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": str(self.system_prompt)})
        if self.chat_tokenizer is not None:
            try:
                rendered = self.chat_tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as err:  # jinja's TemplateError, or whatever a template raises
                raise self._template_error(err) from err
            return ChatPrompt(rendered)  # encoded as written: encoding.prompt_ids
        # No chat template (e.g. the embedded character-level model): plain text, so the
        # arithmetic prompt `37+85=` reaches the model exactly as generated.
        return "\n\n".join(str(m["content"]) for m in messages)
