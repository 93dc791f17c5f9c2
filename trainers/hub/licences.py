"""The model card's licence fields: the LLM's licence governs the weights unless the publisher chooses one."""

import re

# Licence identifiers the Hub accepts in `license:`; anything else is published as `other` + `license_name`.
HUB_LICENSES = {
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause",
    "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0",
    "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openrail", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license",
    "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma",
    "unknown", "other",
}


def license_metadata(base_models: dict, license: str | None) -> tuple[dict, str]:
    """The card's `license` fields and a sentence explaining them. The weights are mostly the LLM's,
    so its licence governs unless `license` overrides it."""
    llm, encoder = base_models.get("llm", {}), base_models.get("encoder", {})
    chosen = license or llm.get("license") or "unknown"
    if chosen in HUB_LICENSES:
        fields = {"license": chosen}
    else:
        link = f"https://huggingface.co/{llm['id']}/blob/main/LICENSE" if llm.get("id") and not license else None
        fields = {"license": "other", "license_name": re.sub(r"[^a-z0-9.-]+", "-", chosen.lower()), "license_link": link}
    if license:
        note = f"Published under `{license}` (chosen by the publisher)."
    elif llm.get("license"):
        note = f"The weights derive from the LLM, so its licence (`{llm['license']}`) applies to the whole model."
    else:
        note = "The LLM's licence is not recorded in this checkpoint: check the base models' terms before use."
    if encoder.get("license") and encoder.get("license") != llm.get("license"):
        note += f" The speech encoder's weights are under `{encoder['license']}`, whose terms apply as well."
    return {key: value for key, value in fields.items() if value}, note
