"""The assessment as data: one set of pydantic models behind the CLI, the API and the web page."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Status(StrEnum):
    present = "present"
    absent = "absent"
    historical = "historical"
    hypothetical = "hypothetical"


class Level(StrEnum):
    low = "low"
    moderate = "moderate"
    high = "high"
    very_high = "very_high"


LEVEL_ORDER = [Level.low, Level.moderate, Level.high, Level.very_high]

Frame = Literal["risk", "set", "setting"]
Spectrum = Literal["safer_use", "managed_use", "abstinence", "conditions_of_use"]
SPECTRUM_ORDER: tuple[str, ...] = ("safer_use", "managed_use", "abstinence", "conditions_of_use")
InterventionLevel = Literal["risk_reduction", "harm_reduction", "Harm_Reduction"]
RiskCategory = Literal[
    "dangerous", "unsafe", "caution", "low_risk_synergy", "low_risk_no_synergy", "low_risk_decrease"
]
FindingSource = Literal["narrative", "questionnaire", "inferred"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Finding(_Model):
    """One thing the situation holds, with the words that show it."""

    code: str
    status: Status = Status.present
    text: str = Field("", description="the evidence, exactly as it stands in the narrative")
    start: int | None = Field(None, description="character offset of the evidence")
    end: int | None = None
    cue: str | None = Field(None, description="the words that set a status other than present")
    label: str = ""
    frame: Frame | Literal["sign"] = "risk"
    source: FindingSource = "narrative"


class RiskReason(_Model):
    factor: str
    says: str
    weight: int
    because: list[str] = Field(description="the findings this reason rests on")
    evidence: list[str] = Field(default_factory=list, description="their words in the narrative")
    source: str


class OverdoseRisk(_Model):
    level: Level
    score: int
    reasons: list[RiskReason]


class UrgentFlag(_Model):
    id: str
    title: str
    what_to_do: list[str]
    because: list[str]
    evidence: list[str] = Field(default_factory=list)
    source: str


class ConnectedHarm(_Model):
    id: str
    label: str
    why: str
    because: list[str]
    source: str


class Combination(_Model):
    substances: list[str]
    risk: RiskCategory
    why: str
    what_to_do: str
    source: str


class PlanItem(_Model):
    strategy: str
    label: str
    says: str = Field(description="the words the person reads")
    spectrum: Spectrum
    level: InterventionLevel
    why: list[str] = Field(description="why this was offered, in plain words")
    because: list[str] = Field(description="the findings behind it")
    urgent: bool = False
    source: str


class Assessment(_Model):
    """Everything riskset says about one situation."""

    text: str = ""
    findings: list[Finding]
    signs: list[Finding] = Field(
        default_factory=list, description="signs that feed urgent flags (chest pain, fever ...)"
    )
    about_others: list[Finding] = Field(
        default_factory=list, description="things said of someone other than the person"
    )
    main_issue: str
    urgent: list[UrgentFlag]
    overdose_risk: OverdoseRisk
    connected_harms: list[ConnectedHarm]
    combinations: list[Combination]
    plan: list[PlanItem]
    knowledge_version: str

    def present(self) -> list[Finding]:
        return [f for f in self.findings if f.status is Status.present]

    def present_codes(self) -> set[str]:
        return {f.code for f in self.present()}
