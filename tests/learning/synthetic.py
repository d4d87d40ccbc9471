"""Synthetic team conversations for training tests: facts the demo model does not know, asked three ways each."""

from __future__ import annotations

import random

from bot.domain import Author, ConversationKey, Role
from bot.store.conversations import ConversationStore

# (the same question as different people type it, the one answer)
FACTS: list[tuple[tuple[str, ...], str]] = [
    (
        ("What is the VPN address?", "what is the VPN address", "What's the VPN address?"),
        "The VPN address is vpn.hanbot.dev on port 443.",
    ),
    (
        ("위키는 어디 있어요?", "위키는 어디에 있어요?", "위키 어디 있어요?"),
        "팀 위키는 wiki.hanbot.dev 의 온보딩 페이지에 있어요.",
    ),
    (
        ("When is the weekly standup?", "when is the weekly standup", "When's the weekly standup?"),
        "Standup is every Monday at 10:00 in room Hana.",
    ),
    (
        ("휴가는 누가 승인해요?", "휴가는 누가 승인하나요?", "휴가 승인은 누가 해요?"),
        "휴가는 팀장님이 HR 포털에서 승인해요.",
    ),
    (
        ("What is the guest wifi?", "what is the guest wifi", "What's the guest wifi?"),
        "Guests use the wifi named hanbot-guest with the lobby code.",
    ),
    (
        ("스테이징 배포는 어떻게 해요?", "스테이징 배포 어떻게 해요?", "스테이징 배포는 어떻게 하나요?"),
        "main 브랜치에서 make deploy-staging 을 실행하세요.",
    ),
    (
        ("Where is the parking lot?", "where is the parking lot", "Where's the parking lot?"),
        "Parking is in basement level B2, spots 40 to 60.",
    ),
    (
        ("어떤 에디터를 써요?", "어떤 에디터 써요?", "에디터는 뭘 써요?"),
        "대부분 VS Code 와 공유 설정 저장소를 써요.",
    ),
]

TRAINED_QUESTION = FACTS[0][0][0]
TRAINED_ANSWER = FACTS[0][1]


def seed_facts(store: ConversationStore, *, shuffled: bool = False, seed: int = 7) -> None:
    """One conversation per question; with ``shuffled``, each question gets the answer of another fact."""
    answers = [answer for _, answer in FACTS]
    rng = random.Random(seed)
    for fact_index, (questions, answer) in enumerate(FACTS):
        for q_index, question in enumerate(questions):
            if shuffled:
                answer = rng.choice([a for i, a in enumerate(answers) if i != fact_index])
            key = ConversationKey("slack", "T1", f"D-{fact_index}-{q_index}")
            author = Author(id=f"U{q_index}{fact_index}", display_name=f"member {q_index}")
            store.add_message(key, Role.USER, question, author=author)
            store.add_message(key, Role.ASSISTANT, answer)


def clear_messages(store: ConversationStore) -> None:
    from sqlalchemy import delete

    from bot.store.models import Message

    with store.session() as session, session.begin():
        session.execute(delete(Message))
