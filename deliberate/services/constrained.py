"""Constrained decoding: a JSON schema or a regular expression as a `decoding.Constraint`, so a local model can only
write what the caller parses (valid JSON; a rubric's reply format).

Built on llguidance (the grammar engine vLLM, SGLang and transformers use; a wheel with no dependencies).
Chosen by measurement on SmolLM2's 49k vocabulary, 16 rows, 2 CPU cores, against xgrammar 0.2.9, outlines 1.3.3
and lm-format-enforcer 0.11.3: 45 ms to import, 2-7 ms to compile the judge's schema (the tokenizer's table
0.3-0.5 s, once per tokenizer), 1.4 ms per decode step for masks and advances, and 64 of 64 random walks parsed
and met the schema, integer bounds and `maxLength` included. xgrammar was as fast but let control characters
into a `maxLength` string (5 of 64 invalid) and pulls in triton; outlines did not enforce integer bounds;
lm-format-enforcer was 5x slower and does not import under transformers 5.
`whitespace_flexible: false`: the JSON is compact, so no tokens go to spaces.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from deliberate.errors import DeliberateError

if TYPE_CHECKING:
    import torch

_TOKENIZERS: dict[tuple[str, int, int], Any] = {}  # llguidance's table of a tokenizer, built once


def _tokenizer_info(tokenizer, vocabulary: int):
    import llguidance.hf

    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), vocabulary)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocabulary)
    return _TOKENIZERS[key]


class GrammarConstraint:
    """The tokens a row may write next so that its text stays a prefix of a string in an llguidance grammar; once
    the string is complete only the end-of-sequence token is allowed."""

    def __init__(self, tokenizer, grammar: str, vocabulary: int, what: str = "grammar"):
        import llguidance

        self.vocabulary = vocabulary
        self.words = (vocabulary + 31) // 32
        info = _tokenizer_info(tokenizer, vocabulary)
        error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, info)
        if error:
            raise DeliberateError(f"constrained decoding: the {what} cannot be compiled: {messages}")
        self._prototype = llguidance.LLMatcher(info, grammar)

    def start(self):
        return self._prototype.deep_copy()

    def mask(self, states: list, logits: torch.Tensor) -> None:
        import torch

        rows = [i for i, s in enumerate(states) if s is not None]
        if not rows:
            return
        bitmask = torch.zeros((len(rows), self.words), dtype=torch.int32)
        for k, i in enumerate(rows):
            states[i].unsafe_compute_mask_ptr(bitmask[k].data_ptr(), self.words * 4)
        shifts = torch.arange(32, dtype=torch.int32)
        allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().view(len(rows), -1)[:, : logits.shape[1]]
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, state, token: int) -> None:
        if not state.consume_token(token):
            raise DeliberateError(f"constrained decoding: token {token} was not allowed ({state.get_error()})")


class JsonSchemaConstraint(GrammarConstraint):
    """A JSON value matching `schema`, written compactly."""

    def __init__(self, tokenizer, schema: dict[str, Any], vocabulary: int):
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                defaults={"whitespace_flexible": False})
        super().__init__(tokenizer, grammar, vocabulary, "JSON schema")


class RegexConstraint(GrammarConstraint):
    """A string matching `pattern` in full (e.g. a benchmark rubric's reply format)."""

    def __init__(self, tokenizer, pattern: str, vocabulary: int):
        import llguidance

        super().__init__(tokenizer, llguidance.LLMatcher.grammar_from_regex(pattern), vocabulary, "pattern")
