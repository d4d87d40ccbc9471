"""Synthetic team conversations for training tests: facts the demo model does not know, asked three ways each."""

from __future__ import annotations

import random

from bot.domain import Author, ConversationKey, Role
from bot.store.conversations import ConversationStore

# (questions asked in different words, the one answer)
FACTS: list[tuple[tuple[str, ...], str]] = [
    (
        ("What is the VPN address?", "Where do I connect for VPN?", "VPN 주소가 뭐예요?"),
        "The VPN address is vpn.hanbot.dev on port 443.",
    ),
    (
        ("Where is the team wiki?", "How do I find the wiki?", "위키는 어디 있어요?"),
        "The team wiki is at wiki.hanbot.dev under Onboarding.",
    ),
    (
        ("When is the weekly standup?", "What time is standup?", "스탠드업은 언제예요?"),
        "Standup is every Monday at 10:00 in room Hana.",
    ),
    (
        ("Who approves vacation?", "How do I request leave?", "휴가는 누가 승인해요?"),
        "Vacation is approved by your team lead in the HR portal.",
    ),
    (
        ("What is the guest wifi?", "Which wifi can visitors use?", "손님용 와이파이는 뭐예요?"),
        "Guests use the wifi named hanbot-guest with the lobby code.",
    ),
    (
        ("How do I deploy to staging?", "What deploys staging?", "스테이징 배포는 어떻게 해요?"),
        "Run make deploy-staging from the main branch.",
    ),
    (
        ("Where is the parking lot?", "Can I park at the office?", "주차는 어디에 해요?"),
        "Parking is in basement level B2, spots 40 to 60.",
    ),
    (
        ("Which editor do we use?", "What IDE is standard here?", "어떤 에디터를 써요?"),
        "Most of the team uses VS Code with the shared settings repo.",
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
