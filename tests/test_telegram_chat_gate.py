"""The per-chat gate every message of a process passes (MockClock): one send in the air per chat,
the next one interval after the previous answer, other chats never held, and the outbox sender
reading the same pacer as the replies."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from aiogram.methods import EditMessageText, SendChatAction, SendMessage, SendPhoto

from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.clock import Clock, seeded_random
from atlas.telegram.chat_gate import ChatGate, chat_gate_of, chat_of, waits_for_chat_slots
from atlas.telegram.session import make_bot


class _Answering:
    """A make_request whose answer takes ``latency``; records when each call went and came back."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls: list[tuple[object, float, float]] = []

    async def __call__(self, bot: object, method: SendMessage) -> str:
        went = trio.current_time()
        await trio.sleep(self.latency)
        self.calls.append((method.chat_id, went, trio.current_time()))
        return "sent"


@pytest.mark.parametrize(
    ("method", "chat"),
    [
        (SendMessage(chat_id=7, text="hi"), 7),
        (SendPhoto(chat_id="@news", photo="file-id"), "@news"),
        (EditMessageText(chat_id=7, message_id=1, text="edited"), None),  # an edit adds no message
        (SendChatAction(chat_id=7, action="typing"), None),
    ],
)
def test_only_calls_that_put_a_message_into_a_chat_take_a_turn(method: object, chat: object) -> None:
    assert chat_of(method) == chat


async def test_sends_to_one_chat_take_turns_one_interval_after_each_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = ChatGate()
    answer = _Answering(latency=0.3)
    began = trio.current_time()
    with waits_for_chat_slots():  # the outbox sender's sends
        async with trio.open_nursery() as nursery:
            for chat in (1, 1, 1, 2):
                nursery.start_soon(gate, answer, None, SendMessage(chat_id=chat, text="x"))
    to_one = [(went - began, back - began) for chat, went, back in answer.calls if chat == 1]
    to_two = [went - began for chat, went, _ in answer.calls if chat == 2]
    # 0 → 0.3 answered; the next goes 1 s later (1.3), answered 1.6; the third at 2.6.
    assert [went for went, _ in to_one] == pytest.approx([0.0, 1.3, 2.6])
    assert to_two == [0.0]  # another chat is never held by this one
    assert gate.waits == 2 and not gate._turns  # nothing kept for chats with no send in the air


async def test_a_reply_does_not_wait_for_the_slot_but_holds_it_for_the_next_notice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = ChatGate()
    answer = _Answering(latency=0.1)
    await gate(answer, None, SendMessage(chat_id=3, text="reply"))  # type: ignore[arg-type]
    await gate(answer, None, SendMessage(chat_id=3, text="second reply"))  # type: ignore[arg-type]
    assert answer.calls[1][1] == pytest.approx(answer.calls[0][2])  # at once after the first answer
    with waits_for_chat_slots():
        await gate(answer, None, SendMessage(chat_id=3, text="notice"))  # type: ignore[arg-type]
    assert answer.calls[2][1] == pytest.approx(answer.calls[1][2] + 1.0)  # an interval after the reply


async def test_a_call_cancelled_while_waiting_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    gate = ChatGate()
    answer = _Answering(latency=0.1)
    await gate(answer, None, SendMessage(chat_id=5, text="first"))  # type: ignore[arg-type]
    with waits_for_chat_slots(), trio.move_on_after(0.5):  # the chat is not ready before 1.1 s
        await gate(answer, None, SendMessage(chat_id=5, text="given up"))  # type: ignore[arg-type]
    assert len(answer.calls) == 1 and not gate._turns
    ready = gate.pacer.ready_at(5)
    with waits_for_chat_slots():
        await gate(answer, None, SendMessage(chat_id=5, text="third"))  # type: ignore[arg-type]
    assert answer.calls[-1][1] == pytest.approx(ready)  # the slot did not move for the cancelled one


async def test_the_outbox_sender_reads_the_pacer_of_the_bots_gate() -> None:
    bot = make_bot("42:gate-test", "http://127.0.0.1:9")
    gate = chat_gate_of(bot)
    assert gate is not None
    sender = OutboxSender(db=lambda: None, bot=bot, clock=Clock(), rng=seeded_random(1))  # type: ignore[arg-type,return-value]
    assert sender.chat_pacer is gate.pacer  # a reply's answer holds the chat for notices too
    other = OutboxSender(
        db=lambda: None,  # type: ignore[arg-type,return-value]
        bot=bot,
        clock=Clock(),
        rng=seeded_random(1),
        settings=SenderSettings(per_chat_rate=0.5),
    )
    assert other.chat_pacer is not gate.pacer and other.chat_pacer.interval == 2.0
    await bot.session.close()
