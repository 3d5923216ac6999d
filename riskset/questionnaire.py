"""The guided assessment: the seed's eight Risk / Set / Setting questions (questionnaire.yaml).

Answers become the same findings a narrative gives, so one engine assesses both.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from . import reading
from .assessment import InputError, assess_findings
from .knowledge import load as load_knowledge
from .models import Assessment, Finding, Status


class Answer(BaseModel):
    """One answer: the choices picked (by position, from 1) and any words in the person's own."""

    model_config = ConfigDict(extra="forbid")
    choices: list[int] = Field(default_factory=list)
    text: str = ""


def answers_to_findings(
    answers: dict[str, Answer],
) -> tuple[list[Finding], list[Finding], list[Finding]]:
    """Findings, signs and what is said of others, from the answers.

    Unknown questions or choices are an InputError.
    """
    kb = load_knowledge()
    questions = {q.id: q for q in kb.questions}
    findings: dict[tuple[str, Status], Finding] = {}
    signs: list[Finding] = []
    others: list[Finding] = []
    for qid, answer in answers.items():
        question = questions.get(qid)
        if question is None:
            raise InputError(f"unknown question {qid!r}; the questions are {', '.join(questions)}")
        for number in answer.choices:
            if not 1 <= number <= len(question.choices):
                raise InputError(f"question {qid!r} has no choice {number}")
            choice = question.choices[number - 1]
            for code in choice.codes:
                finding = Finding(
                    code=code,
                    status=Status(choice.status),
                    text=choice.label,
                    label=kb.label(code),
                    frame=kb.frame(code),
                    source="questionnaire",
                )
                if finding.frame == "sign":
                    signs.append(finding)
                else:
                    findings.setdefault((code, finding.status), finding)
    text = answers_text(answers)
    if text:
        # Read all the free text as one narrative, so evidence offsets point into one text.
        read = reading.read(text)
        for f in read.findings:
            findings.setdefault((f.code, f.status), f)
        signs += read.signs
        others += read.about_others
    return list(findings.values()), signs, others


def answers_text(answers: dict[str, Answer]) -> str:
    return "\n".join(a.text.strip() for a in answers.values() if a.text.strip())


def assess_answers(answers: dict[str, Answer]) -> Assessment:
    findings, signs, others = answers_to_findings(answers)
    return assess_findings(findings, text=answers_text(answers), signs=signs, about_others=others)
