"""The built-in chat templates, as LLaMA-Factory defines those of the same name: per role, the
slots a message fills, each slot either text (with {{content}} for the message) or one token
(the tokenizer's bos or eos, or a named control token).

Training encodes a conversation slot by slot, as LLaMA-Factory does (templates.encode), so no
token ever spans a prompt and its answer; chat renders the Jinja template made from the same
slots (`Template.jinja`), so a saved tokenizer carries the format it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from runner.core.jobspec.job import CONTROL_TOKENS


@dataclass(frozen=True)
class Special:
    """A slot encoded as one id: the tokenizer's bos or eos token, or a control token by name."""

    token: str


BOS, EOS = Special("bos_token"), Special("eos_token")
Slot = str | Special
# LLaMA-Factory's thought words: an answer without a thought gets an empty one (qwen3).
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class Template:
    """A built-in template. Those sharing a name with LLaMA-Factory encode exactly as its do."""

    name: str
    user: tuple[Slot, ...] = ("{{content}}",)
    assistant: tuple[Slot, ...] = ("{{content}}", EOS)
    system: tuple[Slot, ...] = ("{{content}}",)
    prefix: tuple[Slot, ...] = ()
    default_system: str = ""
    stop: tuple[str, ...] = ()  # end-of-turn strings besides the tokenizer's eos
    # eos closes the conversation instead of each answer: no eos between turns in the input, and
    # the first token after each answer but the last is labelled eos (ChatGLM3, GLM-4, Baichuan2).
    efficient_eos: bool = False
    fuse_system: bool = False  # the system text joins the first user message (Llama 2, Mistral, Gemma)
    thought: bool = False  # an answer without <think> gets an empty thought, trained (Qwen3)
    families: tuple[str, ...] = field(default=(), compare=False)  # the models it is made for, for docs

    @property
    def controls(self) -> tuple[str, ...]:
        """Strings that must be single tokens of the vocabulary."""
        return CONTROL_TOKENS.get(self.name, ())

    @property
    def jinja(self) -> str:
        """The chat template rendering these slots: the text training encodes, joined."""
        first = "{% if loop.first %}{% set c = system_text + c %}{% endif %}" if self.fuse_system else ""
        head = (
            ""
            if self.fuse_system
            else f"{{% if loop.first and system %}}{{{{ {_expr(self.system, 'system')} }}}}{{% endif %}}"
        )
        return (
            f"{{# runner template {self.name} #}}"  # names it: templates alike in text differ in training
            "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
            "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
            + (f"{{% set system_text = ({_expr(self.system, 'system')}) if system else '' %}}" if self.fuse_system else "")
            + (f"{{{{ {_expr(self.prefix, '')} }}}}" if self.prefix else "")
            + "{% for m in turns %}{% set c = m['content'] %}"
            + f"{{% if m['role'] == 'user' %}}{head}{first}{{{{ {_expr(self.user, 'c')} }}}}"
            + f"{{% else %}}{{{{ {_expr(self.assistant, 'c')} }}}}{{% endif %}}{{% endfor %}}"
        )  # fmt: skip


def _expr(slots: tuple[Slot, ...], content: str) -> str:
    """One Jinja expression joining the slots, `content` standing for {{content}}."""
    parts = []
    for slot in slots:
        if isinstance(slot, Special):
            parts.append(f"({slot.token} or '')" if slot in (BOS, EOS) else json.dumps(slot.token))
            continue
        before, found, after = slot.partition("{{content}}")
        parts += [json.dumps(before, ensure_ascii=False)] if before else []
        parts += [content] if found else []
        parts += [json.dumps(after, ensure_ascii=False)] if after else []
    return " + ".join(parts) or "''"


_IM = ("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",)
_IM_ANSWER = ("{{content}}<|im_end|>\n",)
_IM_SYSTEM = ("<|im_start|>system\n{{content}}<|im_end|>\n",)
_GLM_SYSTEM = (Special("<|system|>"), "\n", "{{content}}")
_INTERN = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language "
    "chosen by the user such as English and 中文."
)

BUILTIN: dict[str, Template] = {
    t.name: t
    for t in (
        Template("default", user=("Human: {{content}}", EOS, "\nAssistant:"), assistant=("{{content}}", EOS, "\n"),
                 system=("System: {{content}}", EOS, "\n"), families=("any base model",)),
        Template("alpaca", user=("### Instruction:\n{{content}}\n\n### Response:\n",),
                 assistant=("{{content}}", EOS, "\n\n"),
                 default_system="Below is an instruction that describes a task. Write a response that "
                 "appropriately completes the request.\n\n", families=("any base model",)),
        Template("vicuna", user=("USER: {{content}} ASSISTANT:",),
                 default_system="A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.",
                 families=("Vicuna", "LLaMA-1 and Llama 2 fine-tunes in its format")),
        Template("chatml", user=_IM, assistant=_IM_ANSWER, system=_IM_SYSTEM, stop=("<|im_end|>", "<|im_start|>"),
                 families=("models trained on ChatML",)),
        Template("qwen", user=_IM, assistant=_IM_ANSWER, system=_IM_SYSTEM, stop=("<|im_end|>",),
                 default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                 families=("Qwen1.5", "Qwen2", "Qwen2.5")),
        Template("qwen3_nothink", user=_IM, assistant=_IM_ANSWER, system=_IM_SYSTEM, stop=("<|im_end|>",),
                 families=("Qwen3-Instruct-2507", "Qwen3 without thinking")),
        Template("qwen3", user=_IM, assistant=_IM_ANSWER, system=_IM_SYSTEM, stop=("<|im_end|>",), thought=True,
                 families=("Qwen3 (thinking)",)),
        Template("yi", user=_IM, assistant=_IM_ANSWER, system=_IM_SYSTEM, stop=("<|im_end|>",),
                 families=("Yi", "Yi-1.5")),
        Template("intern2", user=_IM, assistant=_IM_ANSWER, system=_IM_SYSTEM, prefix=(BOS,), stop=("<|im_end|>",),
                 default_system=_INTERN, families=("InternLM2", "InternLM2.5")),
        Template("llama2", user=(BOS, "[INST] {{content}} [/INST]"), system=("<<SYS>>\n{{content}}\n<</SYS>>\n\n",),
                 fuse_system=True, families=("Llama 2 chat",)),
        Template("llama3", prefix=(BOS,), stop=("<|eot_id|>", "<|eom_id|>"),
                 user=("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n",),
                 assistant=("{{content}}<|eot_id|>",),
                 system=("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",),
                 families=("Llama 3", "Llama 3.1", "Llama 3.2", "Llama 3.3")),
        Template("mistral", prefix=(BOS,), user=("[INST] {{content}}[/INST]",), assistant=(" {{content}}", EOS),
                 system=("{{content}}\n\n",), fuse_system=True, families=("Mistral 7B Instruct", "Mixtral")),
        Template("chatglm3", prefix=(Special("[gMASK]"), Special("sop")), efficient_eos=True,
                 user=(Special("<|user|>"), "\n", "{{content}}", Special("<|assistant|>")),
                 assistant=("\n", "{{content}}"), system=_GLM_SYSTEM, stop=("<|user|>", "<|observation|>"),
                 families=("ChatGLM3",)),
        Template("glm4", prefix=("[gMASK]<sop>",), efficient_eos=True, user=("<|user|>\n{{content}}<|assistant|>",),
                 assistant=("\n{{content}}",), system=("<|system|>\n{{content}}",), stop=("<|user|>", "<|observation|>"),
                 families=("GLM-4", "GLM-4-0414")),
        Template("baichuan2", user=("<reserved_106>{{content}}<reserved_107>",), assistant=("{{content}}",),
                 efficient_eos=True, families=("Baichuan 2",)),
        Template("deepseek", prefix=(BOS,), user=("User: {{content}}\n\nAssistant:",), system=("{{content}}\n\n",),
                 families=("DeepSeek LLM", "DeepSeek-V2")),
        Template("deepseek3", prefix=(BOS,), user=("<｜User｜>{{content}}<｜Assistant｜>",),
                 families=("DeepSeek-V3", "DeepSeek-R1 distills in V3's format")),
        Template("gemma", prefix=(BOS,), user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
                 assistant=("{{content}}<end_of_turn>\n",), system=("{{content}}\n\n",), fuse_system=True,
                 stop=("<end_of_turn>",), families=("Gemma", "Gemma 2")),
        Template("phi", user=("<|user|>\n{{content}}<|end|>\n<|assistant|>\n",), assistant=("{{content}}<|end|>\n",),
                 system=("<|system|>\n{{content}}<|end|>\n",), stop=("<|end|>",), families=("Phi-3", "Phi-3.5")),
    )
}  # fmt: skip
