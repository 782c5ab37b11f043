"""A test package's tokenizer and chat template, as the daemon opens them."""

from tokenizers import Tokenizer

from appliance.engine.chat import ChatTemplate
from appliance.model_package import open_package


def tokenizer_and_template(path) -> tuple[Tokenizer, ChatTemplate]:
    manifest = open_package(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    template = ChatTemplate(manifest.chat_template, tokenizer.id_to_token(manifest.bos_token_id or 0) or "",
                            tokenizer.id_to_token(manifest.eos_token_ids[0]) or "")
    return tokenizer, template
