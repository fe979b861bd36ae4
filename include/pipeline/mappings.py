"""Per-type mapping rules (ThreatConnect type -> Graph tiIndicator / STIX fields), loaded from validated YAML."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from include.pipeline.mapping_schema import (  # noqa: F401 (MappingError and DESCRIPTION_FIELDS are re-exported)
    DESCRIPTION_FIELDS,
    SCHEMA,
    MappingError,
    check_shape,
    check_template,
    one_of,
)

#: Where the shipped mapping files live: one ``<type in lowercase>.yaml`` per ThreatConnect type.
DEFAULT_DIRECTORY = Path(__file__).resolve().parent.parent / "mappings"


def _discover(directory: Path) -> tuple[str, ...]:
    """The types the shipped mapping files declare, in their ``order``: the YAML files are the one registry."""
    found: list[tuple[int, str]] = []
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        name = str((data.get("threatconnect") or {}).get("type") or "")
        if path.stem != name.lower():
            raise MappingError(f"{path.name}: threatconnect.type {name!r} does not match the file name")
        found.append((int(data.get("order", 1000)), name))
    return tuple(name for _, name in sorted(found))


#: Canonicaliser kind -> the value variants it can produce (each needs a Graph observable property).
KIND_VARIANTS: dict[str, tuple[str, ...]] = {
    "ip": ("ipv4", "ipv6"),
    "host": ("domain",),
    "url": ("url",),
    "email": ("email",),
    "hash": ("md5", "sha1", "sha256"),
}

#: Graph tiIndicator observable properties a value may be carried in (microsoft_api.md §1.3).
GRAPH_OBSERVABLES: tuple[str, ...] = (
    "networkIPv4",
    "networkIPv6",
    "networkDestinationIPv4",
    "networkDestinationIPv6",
    "networkSourceIPv4",
    "networkSourceIPv6",
    "domainName",
    "url",
    "emailSenderAddress",
    "emailRecipient",
    "emailSourceDomain",
    "fileHashValue",
)

#: Graph threatType strings (microsoft_api.md §1.2). Plain strings in the schema, so a typo would not be caught
#: by Graph until a create fails; WatchList is listed but partners "should not use" it, so it is refused here.
GRAPH_THREAT_TYPES = frozenset(
    {"Botnet", "C2", "CryptoMining", "Darknet", "DDoS", "MaliciousUrl", "Malware", "Phishing", "Proxy", "PUA"}
)

TLP_LEVELS: tuple[str, ...] = ("white", "green", "amber", "red")  # least to most restrictive

#: ThreatConnect system security labels (threatconnect_api.md §5), keys upper-cased and without spaces.
STANDARD_TLP_LABELS: dict[str, str] = {
    "TLP:WHITE": "white",
    "TLP:CLEAR": "white",
    "TLP:GREEN": "green",
    "TLP:AMBER": "amber",
    "TLP:AMBER+STRICT": "amber",
    "TLP:RED": "red",
}

#: STIX 2.1 indicator-type-ov; the vocabulary is open, but a typo here would silently change every id's type.
STIX_INDICATOR_TYPES = frozenset(
    {"anomalous-activity", "anonymization", "benign", "compromised", "malicious-activity", "attribution", "unknown"}
)

#: Graph's documented limit for tiIndicator.description (microsoft_api.md §1.2).
DESCRIPTION_MAX = 100


#: The ThreatConnect indicator types this pipeline carries, in the order the DAG maps over them: one
#: ``include/mappings/<type>.yaml`` each, read once when this module is imported (files only, no network).
SUPPORTED_TYPES: tuple[str, ...] = _discover(DEFAULT_DIRECTORY)

#: Defender's indicatorType values (microsoft_api.md §3); a mapping may only name these.
DEFENDER_INDICATOR_TYPES: tuple[str, ...] = (
    "FileSha1",
    "FileMd5",
    "CertificateThumbprint",
    "FileSha256",
    "IpAddress",
    "DomainName",
    "Url",
)


@dataclass(frozen=True)
class ExpirationPolicy:
    """How long an indicator stays valid in the target.

    Attributes:
        days: days after ThreatConnect's ``lastModified`` when no override applies.
        by_rating: ``(rounded threat rating, days)`` overrides, e.g. ``((5, 90),)``.
        use_threatconnect_expiry: take ``externalDateExpires`` when ThreatConnect has one.
    """

    days: int
    by_rating: tuple[tuple[int, int], ...] = ()
    use_threatconnect_expiry: bool = True

    def days_for(self, rounded_rating: int | None) -> int:
        """Days of validity for an indicator with this rounded threat rating (None when unrated)."""
        for rating, days in self.by_rating:
            if rating == rounded_rating:
                return days
        return self.days


@dataclass(frozen=True)
class Mapping:
    """Everything the pipeline needs to turn one ThreatConnect type into target indicators.

    Tuples instead of dicts keep the dataclass hashable (usable as a cache key).

    Attributes:
        indicator_type: ThreatConnect type name (``Address``, ``Host``, ...).
        v2_branch: v2 API path branch (``addresses``).
        v2_entity: v2 JSON list key (``address``).
        v3_type: the v3 API's / TQL's type name.
        value_fields: the JSON keys that carry the value (``md5``, ``sha1``, ``sha256`` for File).
        order: where the DAG maps this type among the others.
        kind: canonicaliser kind (``ip``, ``host``, ``url``, ``email``, ``hash``).
        observables: ``(variant, Graph property)`` pairs, one per variant of the kind.
        threat_type: Graph ``threatType``; fixed per type so an update never changes it.
        stix_indicator_types: STIX ``indicator_types``; fixed per type (changing it changes Sentinel's id).
        stix_observables: ``(variant, STIX object path)`` pairs (``ipv4`` -> ``ipv4-addr:value``).
        defender_types: ``(variant, Defender indicatorType)`` pairs; empty when Defender has none for the type.
        tlp_default: TLP level when no security label maps to one.
        tlp_labels: ``(label, level)`` pairs: the standard TLP labels plus the file's extra ones.
        confidence_default: confidence when ThreatConnect has none.
        severity_default: severity when the threat rating is unset (Graph's default is 3).
        zero_rating_is_unset: treat threat rating 0 ("Unknown" in ThreatConnect) as unset.
        expiration: the expiration policy.
        extra_tags: tags added to every indicator of this type.
        description_template: rendered when ThreatConnect has a description.
        description_fallback: rendered when it has none.
    """

    indicator_type: str
    v2_branch: str
    v2_entity: str
    v3_type: str
    value_fields: tuple[str, ...]
    order: int
    kind: str
    observables: tuple[tuple[str, str], ...]
    threat_type: str
    stix_indicator_types: tuple[str, ...]
    stix_observables: tuple[tuple[str, str], ...]
    defender_types: tuple[tuple[str, str], ...]
    tlp_default: str
    tlp_labels: tuple[tuple[str, str], ...]
    confidence_default: int
    severity_default: int
    zero_rating_is_unset: bool
    expiration: ExpirationPolicy
    extra_tags: tuple[str, ...]
    description_template: str
    description_fallback: str

    def observable(self, variant: str) -> str:
        """The Graph property that carries a value of this variant (``ipv4`` -> ``networkIPv4``)."""
        for name, prop in self.observables:
            if name == variant:
                return prop
        raise KeyError(f"{self.indicator_type} mapping has no observable for variant {variant!r}")

    def stix_path(self, variant: str) -> str:
        """The STIX object path a pattern compares for this variant (``file:hashes.'SHA-256'``)."""
        return dict(self.stix_observables)[variant]

    def defender_type(self, variant: str) -> str | None:
        """Defender's indicatorType for this variant, or None when Defender has none."""
        return dict(self.defender_types).get(variant)


def variant_of(kind: str, value: str, hash_type: str | None = None) -> str:
    """The variant of a canonical value of ``kind``: ``ipv4``/``ipv6`` for ip, the hash kind for hash.

    Raises:
        ValueError: a kind this registry does not know, or a hash without a known hash kind.
    """
    if kind == "ip":
        return "ipv6" if ":" in value else "ipv4"
    if kind == "hash":
        variant = str(hash_type or "").lower().replace("-", "")
        if variant not in KIND_VARIANTS["hash"]:
            raise ValueError(f"unknown hash type {hash_type!r}")
        return variant
    if kind not in KIND_VARIANTS:
        raise ValueError(f"unknown kind {kind!r}")
    return KIND_VARIANTS[kind][0]


def _build(data: dict[str, Any], where: str) -> Mapping:
    check_shape(data, SCHEMA, where)
    tc = data["threatconnect"]
    kind = one_of(data["kind"], KIND_VARIANTS, "kind", where)

    observables = data["graph"]["observables"]
    variants = KIND_VARIANTS[kind]
    if sorted(map(str, observables)) != sorted(variants):
        raise MappingError(
            f"{where}: graph.observables must name exactly the variants of kind {kind!r}: {', '.join(variants)}"
        )
    for variant in variants:
        one_of(observables[variant], GRAPH_OBSERVABLES, f"graph.observables.{variant}", where)

    for target, table in (
        ("stix.observables", data["stix"]["observables"]),
        ("defender.indicator_types", data["defender"]["indicator_types"]),
    ):
        unknown = sorted(set(map(str, table)) - set(variants))
        if unknown:
            raise MappingError(f"{where}: {target} names {unknown[0]!r}, not a variant of kind {kind!r}")
    missing = sorted(set(variants) - set(map(str, data["stix"]["observables"])))
    if missing:
        raise MappingError(f"{where}: stix.observables has no path for variant {missing[0]!r}")
    for variant, name in data["defender"]["indicator_types"].items():
        one_of(name, DEFENDER_INDICATOR_TYPES, f"defender.indicator_types.{variant}", where)
    fields = tc["value_fields"]
    if not fields or not all(isinstance(f, str) and f for f in fields):
        raise MappingError(f"{where}: threatconnect.value_fields must list the JSON keys of the value")

    stix_types = data["stix"]["indicator_types"]
    if not stix_types:
        raise MappingError(f"{where}: stix.indicator_types must not be empty")
    for i, t in enumerate(stix_types):
        one_of(t, STIX_INDICATOR_TYPES, f"stix.indicator_types[{i}]", where)

    tlp = data["tlp"]
    labels = dict(STANDARD_TLP_LABELS)
    for label, level in tlp.get("labels", {}).items():
        key = tlp_key(str(label))
        labels[key] = one_of(level, TLP_LEVELS, f"tlp.labels.{label}", where)

    confidence = data["confidence"]["default"]
    if not 0 <= confidence <= 100:
        raise MappingError(f"{where}: confidence.default must be within 0-100, got {confidence}")
    severity = data["severity"]["default"]
    if not 0 <= severity <= 5:
        raise MappingError(f"{where}: severity.default must be within 0-5, got {severity}")

    exp = data["expiration"]
    if exp["days"] <= 0:
        raise MappingError(f"{where}: expiration.days must be positive, got {exp['days']}")
    by_rating: list[tuple[int, int]] = []
    for rating, days in sorted(exp.get("by_rating", {}).items(), key=lambda kv: str(kv[0])):
        if isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 5:
            raise MappingError(f"{where}: expiration.by_rating keys must be ratings 0-5, got {rating!r}")
        if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
            raise MappingError(f"{where}: expiration.by_rating.{rating} must be a positive integer, got {days!r}")
        by_rating.append((rating, days))

    extra_tags = data.get("tags", {}).get("extra", [])
    for i, tag in enumerate(extra_tags):
        if not isinstance(tag, str) or not tag.strip():
            raise MappingError(f"{where}: tags.extra[{i}] must be a non-empty string, got {tag!r}")

    desc = data["description"]
    return Mapping(
        indicator_type=one_of(tc["type"], SUPPORTED_TYPES, "threatconnect.type", where),
        v2_branch=tc["v2_branch"],
        v2_entity=tc["v2_entity"],
        v3_type=tc["v3_type"],
        value_fields=tuple(tc["value_fields"]),
        order=int(data.get("order", 1000)),
        kind=kind,
        observables=tuple((v, observables[v]) for v in variants),
        threat_type=one_of(data["graph"]["threat_type"], GRAPH_THREAT_TYPES, "graph.threat_type", where),
        stix_indicator_types=tuple(stix_types),
        stix_observables=tuple((v, str(data["stix"]["observables"][v])) for v in variants),
        defender_types=tuple((v, str(t)) for v, t in data["defender"]["indicator_types"].items()),
        tlp_default=one_of(tlp["default"], TLP_LEVELS, "tlp.default", where),
        tlp_labels=tuple(sorted(labels.items())),
        confidence_default=confidence,
        severity_default=severity,
        zero_rating_is_unset=data["severity"].get("zero_rating_is_unset", True),
        expiration=ExpirationPolicy(
            days=exp["days"],
            by_rating=tuple(sorted(by_rating)),
            use_threatconnect_expiry=exp.get("use_threatconnect_expiry", True),
        ),
        extra_tags=tuple(t.strip() for t in extra_tags),
        description_template=check_template(desc["template"], "description.template", where),
        description_fallback=check_template(desc["fallback"], "description.fallback", where),
    )


def tlp_key(label: str) -> str:
    """Fold the spellings ThreatConnect users vary (``TLP: Amber``, ``tlp:amber``) to one key (``TLP:AMBER``)."""
    return "".join(label.split()).upper()


# --- loading ----------------------------------------------------------------------------------------------------


def mapping_path(indicator_type: str, directory: Path | str | None = None) -> Path:
    """The file that holds the mapping of a ThreatConnect type (``EmailAddress`` -> ``emailaddress.yaml``)."""
    return Path(directory or DEFAULT_DIRECTORY) / f"{indicator_type.lower()}.yaml"


def load_mapping(indicator_type: str, directory: Path | str | None = None) -> Mapping:
    """Load and validate the mapping of one ThreatConnect type.

    Args:
        indicator_type: a name from ``SUPPORTED_TYPES``.
        directory: where the YAML files are; the shipped ``include/mappings`` when None.

    Returns:
        The validated, immutable mapping.

    Raises:
        MappingError: the type is unsupported, or its file is missing, unreadable or invalid.
    """
    if indicator_type not in SUPPORTED_TYPES:
        raise MappingError(f"unsupported indicator type {indicator_type!r} (supported: {', '.join(SUPPORTED_TYPES)})")
    if directory is None:
        return _load_default(indicator_type)
    return _load(mapping_path(indicator_type, directory), indicator_type)


@functools.cache
def _load_default(indicator_type: str) -> Mapping:
    # The shipped files do not change while a worker runs; parse each once per process.
    return _load(mapping_path(indicator_type), indicator_type)


def _load(path: Path, indicator_type: str) -> Mapping:
    where = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{where}: cannot read mapping file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{where}: not valid YAML: {exc}") from exc
    mapping = _build(data, where)
    if mapping.indicator_type != indicator_type:
        raise MappingError(f"{where}: threatconnect.type is {mapping.indicator_type!r}, expected {indicator_type!r}")
    return mapping


def mapping_for(indicator_type: Any, kind: Any = None) -> Mapping:
    """The shipped mapping of a row: by its ThreatConnect type, or (rows built without one) by its kind.

    Raises:
        MappingError: neither names a supported type.
    """
    if isinstance(indicator_type, str) and indicator_type in SUPPORTED_TYPES:
        return load_mapping(indicator_type)
    matches = [m for m in load_all().values() if m.kind == kind]
    if len(matches) != 1:
        raise MappingError(f"no single mapping for type {indicator_type!r} / kind {kind!r}")
    return matches[0]


def load_all(directory: Path | str | None = None) -> dict[str, Mapping]:
    """Load and validate every supported type's mapping, keyed by ThreatConnect type name."""
    return {t: load_mapping(t, directory) for t in SUPPORTED_TYPES}
