"""A deterministic synthetic /sync corpus: the input every ingest benchmark shares.

:func:`make_corpus` builds the body of one classic initial ``/sync`` (v3, as
Synapse serves it with ``lazy_load_members``) for an account in ``rooms``
rooms, each carrying exactly ``events_per_room`` state + timeline events, from
a seeded :class:`random.Random`: the same arguments give the same bytes on
every machine and Python version (only ``random.Random``'s integer/float
stream and ``json.dumps`` are used, both stable).

What a room looks like
----------------------
* Kinds: 15% direct chats (no name, ``m.heroes`` with the other user, 2
  members, listed in the account's ``m.direct``), 70% private groups (a name,
  often a topic), 15% large public rooms (name, topic, canonical alias,
  ``public`` join rule, hundreds of joined members).
* State (the ``state`` block, before the timeline): ``m.room.create``
  (room version 10), ``m.room.power_levels``, ``m.room.join_rules``,
  ``m.room.history_visibility``, name, topic, canonical alias when the kind has
  them, and the lazy-loaded ``m.room.member`` events of the timeline's senders
  and of the heroes (with display names, some with avatars).
* 10% of the rooms are young: their whole history fits in the timeline
  (``limited: false``), so create, joins, power levels, name and topic arrive
  as timeline events (rows of the timeline in skiffyd).
* Timeline: ``m.room.message`` of every msgtype (text, notice, emote, image,
  file, audio, video, location) with varied body lengths, about a fifth with
  ``format``/``formatted_body``; replies (``m.in_reply_to``), thread replies
  (``m.thread``), edits (``m.replace`` with ``m.new_content``), reactions
  (``m.annotation``), redactions (the target, if in the same timeline, is
  served already redacted, with ``unsigned.redacted_because``, as Synapse does),
  and now and then a join or a topic change.
* ``summary`` (heroes for rooms without a name or alias, member counts),
  ``unread_notifications``, an ``m.receipt`` (the account's own read receipt
  some messages back, and another member's on the newest event), room account
  data (``m.fully_read``, some ``m.tag``).

:meth:`Corpus.incremental` builds the body of an incremental ``/sync`` that
carries ONE new ``m.room.message`` in one room of the account.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any

SERVER = "example.org"
OWN_USER = f"@me:{SERVER}"
DEFAULT_SEED = 20240603
DEFAULT_ROOMS = 1000
DEFAULT_EVENTS_PER_ROOM = 57

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_FIRST = [
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Erin",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Niaj",
    "Olivia",
    "Peggy",
    "Rupert",
    "Sybil",
    "Trent",
    "Uma",
    "Victor",
    "Walter",
    "Xena",
    "Yusuf",
    "Zoe",
    "Amara",
    "Bruno",
    "Chidi",
    "Dagny",
    "Elif",
    "Farid",
    "Greta",
    "Hana",
    "Ines",
    "Jonas",
    "Kenji",
    "Lena",
    "Mateo",
    "Noor",
    "Oskar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
]
_LAST = [
    "Smith",
    "Jones",
    "Okafor",
    "Nguyen",
    "Garcia",
    "Müller",
    "Rossi",
    "Kowalski",
    "Tanaka",
    "Haddad",
    "Silva",
    "Novak",
    "Andersen",
    "Dubois",
    "Moreau",
    "Costa",
    "Ivanova",
    "Kaur",
    "Mensah",
    "Lindqvist",
    "Yilmaz",
    "Park",
    "Ferreira",
]
_WORDS = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "you",
    "this",
    "with",
    "be",
    "are",
    "have",
    "not",
    "was",
    "we",
    "can",
    "just",
    "but",
    "so",
    "what",
    "do",
    "at",
    "if",
    "about",
    "like",
    "will",
    "your",
    "my",
    "all",
    "they",
    "get",
    "one",
    "there",
    "our",
    "release",
    "build",
    "deploy",
    "test",
    "merge",
    "branch",
    "review",
    "ticket",
    "meeting",
    "tomorrow",
    "today",
    "lunch",
    "coffee",
    "server",
    "client",
    "room",
    "message",
    "sync",
    "cache",
    "daemon",
    "latency",
    "window",
    "patch",
    "bug",
    "fix",
    "issue",
    "looks",
    "good",
    "thanks",
    "sure",
    "maybe",
    "later",
    "please",
    "check",
    "link",
    "doc",
    "draft",
    "agree",
    "disagree",
    "question",
    "answer",
    "update",
    "status",
    "ready",
    "blocked",
    "done",
    "pending",
    "soon",
    "🙂",
    "👍",
    "🎉",
    "ok",
    "yes",
    "no",
    "hmm",
    "interesting",
    "wow",
    "nice",
    "great",
    "indeed",
    "matrix",
    "federation",
    "homeserver",
    "encryption",
    "keys",
    "backup",
    "device",
    "verify",
    "cross",
    "signing",
    "emoji",
    "kernel",
    "python",
    "rust",
    "go",
    "typescript",
    "benchmark",
    "profile",
    "memory",
    "throughput",
    "ingest",
    "apsw",
]
_REACTIONS = ("👍", "❤️", "😂", "🎉", "👀", "🙏", "✅", "🚀", "+1", "😮")
_FILE_NAMES = ("report.pdf", "notes.txt", "budget.xlsx", "slides.odp", "trace.tar.gz")
_MIMES = {
    "report.pdf": "application/pdf",
    "notes.txt": "text/plain",
    "budget.xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "slides.odp": "application/vnd.oasis.opendocument.presentation",
    "trace.tar.gz": "application/gzip",
}
_TOPICS = (
    "Release coordination — be kind, stay on topic",
    "Everything about the sync engine. Logs: https://example.org/logs",
    "Weekly planning; notes are pinned",
    "Off-topic chatter, memes welcome",
    "Support channel: read the FAQ first https://example.org/faq",
)

#: Timeline event kinds (cumulative thresholds); "message" is a new m.room.message.
_KINDS = (
    (0.68, "message"),
    (0.73, "edit"),
    (0.85, "reaction"),
    (0.875, "redaction"),
    (0.915, "reply"),
    (0.95, "thread"),
    (0.96, "topic"),
    (0.975, "join"),
    (1.00, "message"),
)
#: Message kinds (cumulative thresholds) within a timeline.
_MSGTYPES = (
    (0.76, "m.text"),
    (0.82, "m.notice"),
    (0.85, "m.emote"),
    (0.91, "m.image"),
    (0.94, "m.file"),
    (0.96, "m.audio"),
    (0.98, "m.video"),
    (1.00, "m.location"),
)


def _timeline_kind(r: float) -> str:
    for threshold, kind in _KINDS:
        if r < threshold:
            return kind
    return "message"


def _token(rng: random.Random, n: int, alphabet: str = _B64) -> str:
    return "".join(alphabet[rng.randrange(len(alphabet))] for _ in range(n))


def _event_id(rng: random.Random) -> str:
    return "$" + _token(rng, 43)


def _mxc(rng: random.Random) -> str:
    return f"mxc://{SERVER}/{_token(rng, 24, _LETTERS)}"


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _body(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.65:
        return _words(rng, 1, 5)
    if r < 0.98:
        return _words(rng, 6, 12)
    return _words(rng, 13, 50)


@dataclass
class CorpusRoom:
    """What the generator knows of a room, for incremental syncs."""

    room_id: str
    members: list[str]
    last_event_id: str
    ts: int


@dataclass
class Corpus:
    body: dict[str, Any]
    data: bytes
    rooms: list[CorpusRoom]
    events: int
    seed: int
    _rng: random.Random = field(repr=False, default_factory=random.Random)
    _batch: int = 0

    def incremental(self, room_index: int) -> bytes:
        """An incremental /sync with ONE new m.room.message in room ``room_index``."""
        rng = self._rng
        room = self.rooms[room_index % len(self.rooms)]
        self._batch += 1
        room.ts += rng.randint(1_000, 60_000)
        sender = rng.choice(room.members)
        event_id = _event_id(rng)
        event = {
            "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": _body(rng)},
            "sender": sender,
            "origin_server_ts": room.ts,
            "unsigned": {"age": rng.randint(10, 900)},
            "event_id": event_id,
        }
        room.last_event_id = event_id
        body = {
            "next_batch": f"s{self.seed}_{self._batch}_incr",
            "rooms": {
                "join": {
                    room.room_id: {
                        "timeline": {
                            "events": [event],
                            "limited": False,
                            "prev_batch": f"t{self._batch}_prev",
                        },
                        "state": {"events": []},
                        "ephemeral": {"events": []},
                        "account_data": {"events": []},
                        "unread_notifications": {
                            "notification_count": 1 if sender != OWN_USER else 0,
                            "highlight_count": 0,
                        },
                        "summary": {},
                    }
                },
                "invite": {},
                "leave": {},
            },
            "account_data": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {"signed_curve25519": 50},
            "device_unused_fallback_key_types": ["signed_curve25519"],
        }
        return encode(body)


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON, as Synapse sends it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class _RoomBuilder:
    def __init__(
        self, rng: random.Random, index: int, users: list[tuple[str, str, str | None]]
    ) -> None:
        self.rng = rng
        self.index = index
        self.users = users
        self.room_id = f"!{_token(rng, 18, _LETTERS)}:{SERVER}"
        r = rng.random()
        self.kind = "dm" if r < 0.15 else ("group" if r < 0.85 else "public")
        self.young = rng.random() < 0.10
        # Newest activity first across the account, minutes to months ago.
        self.ts = 1_717_000_000_000 - index * rng.randint(60_000, 3_600_000)
        self.now = 1_717_000_000_000 + 7 * 3_600_000

    # ------------------------------------------------------------- events

    def _tick(self) -> int:
        self.ts += self.rng.randint(2_000, 900_000)
        return self.ts

    def _event(
        self,
        type_: str,
        sender: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        unsigned: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        ts = self._tick()
        ev: dict[str, Any] = {"type": type_, "content": content, "sender": sender}
        if state_key is not None:
            ev["state_key"] = state_key
        ev["origin_server_ts"] = ts
        ev["unsigned"] = {"age": max(0, self.now - ts), **(unsigned or {})}
        ev["event_id"] = _event_id(self.rng)
        return ev

    def _member(
        self, user: tuple[str, str, str | None], sender: str | None = None
    ) -> dict[str, Any]:
        user_id, name, avatar = user
        content: dict[str, Any] = {"membership": "join", "displayname": name}
        if avatar:
            content["avatar_url"] = avatar
        return self._event("m.room.member", sender or user_id, content, state_key=user_id)

    def _message_content(self, msgtype: str) -> dict[str, Any]:
        rng = self.rng
        if msgtype in ("m.text", "m.notice", "m.emote"):
            body = _body(rng)
            content: dict[str, Any] = {"msgtype": msgtype, "body": body}
            if msgtype == "m.text" and rng.random() < 0.12:
                words = body.split(" ")
                cut = max(1, len(words) // 3)
                content["format"] = "org.matrix.custom.html"
                content["formatted_body"] = (
                    f"<p><strong>{' '.join(words[:cut])}</strong> {' '.join(words[cut:])}"
                    + (
                        f' <a href="https://example.org/{_token(rng, 8)}">link</a>'
                        if cut > 2
                        else ""
                    )
                    + "</p>"
                )
            return content
        if msgtype == "m.image":
            w, h = rng.choice(((1920, 1080), (1080, 1350), (800, 600), (4032, 3024)))
            return {
                "msgtype": "m.image",
                "body": f"IMG_{rng.randint(1000, 9999)}.jpg",
                "url": _mxc(rng),
                "info": {
                    "mimetype": "image/jpeg",
                    "size": rng.randint(40_000, 4_000_000),
                    "w": w,
                    "h": h,
                    "thumbnail_url": _mxc(rng),
                    "thumbnail_info": {
                        "mimetype": "image/jpeg",
                        "size": rng.randint(5_000, 60_000),
                        "w": 800,
                        "h": 600,
                    },
                },
            }
        if msgtype == "m.file":
            name = rng.choice(_FILE_NAMES)
            return {
                "msgtype": "m.file",
                "body": name,
                "filename": name,
                "url": _mxc(rng),
                "info": {"mimetype": _MIMES[name], "size": rng.randint(1_000, 9_000_000)},
            }
        if msgtype == "m.audio":
            return {
                "msgtype": "m.audio",
                "body": "Voice message.ogg",
                "url": _mxc(rng),
                "info": {
                    "mimetype": "audio/ogg",
                    "size": rng.randint(5_000, 500_000),
                    "duration": rng.randint(1_000, 120_000),
                },
                "org.matrix.msc3245.voice": {},
            }
        if msgtype == "m.video":
            return {
                "msgtype": "m.video",
                "body": f"VID_{rng.randint(1000, 9999)}.mp4",
                "url": _mxc(rng),
                "info": {
                    "mimetype": "video/mp4",
                    "size": rng.randint(500_000, 40_000_000),
                    "duration": rng.randint(2_000, 300_000),
                    "w": 1280,
                    "h": 720,
                    "thumbnail_url": _mxc(rng),
                    "thumbnail_info": {"mimetype": "image/jpeg", "w": 1280, "h": 720},
                },
            }
        lat, lon = rng.uniform(-60, 60), rng.uniform(-180, 180)
        return {
            "msgtype": "m.location",
            "body": f"Location at {lat:.4f}, {lon:.4f}",
            "geo_uri": f"geo:{lat:.5f},{lon:.5f}",
            "m.mentions": {},
        }

    def _msgtype(self) -> str:
        r = self.rng.random()
        for threshold, msgtype in _MSGTYPES:
            if r < threshold:
                return msgtype
        return "m.text"

    # --------------------------------------------------------------- room

    def build(self, events_per_room: int) -> tuple[dict[str, Any], CorpusRoom, str | None]:
        rng = self.rng
        others_n = 1 if self.kind == "dm" else rng.randint(2, 7)
        picks = rng.sample(range(len(self.users)), others_n)
        others = [self.users[i] for i in picks]
        own = (OWN_USER, "Me Myself", None)
        creator = others[0] if self.kind != "dm" or rng.random() < 0.5 else own
        members = [own, *others]
        member_ids = [m[0] for m in members]
        joined = {
            "dm": 2,
            "group": others_n + 1 + rng.randint(0, 12),
            "public": rng.randint(80, 2_500),
        }[self.kind]
        named = self.kind != "dm" and (self.kind == "public" or rng.random() < 0.85)
        name = f"{rng.choice(_WORDS).capitalize()} {rng.choice(_WORDS)} {self.index}"

        setup: list[dict[str, Any]] = [
            self._event(
                "m.room.create",
                creator[0],
                {"room_version": "10", "creator": creator[0]},
                state_key="",
            ),
            self._member(creator),
            self._event(
                "m.room.power_levels",
                creator[0],
                {
                    "users": {creator[0]: 100, **{u: 50 for u in member_ids[:2]}},
                    "users_default": 0,
                    "events": {
                        "m.room.name": 50,
                        "m.room.power_levels": 100,
                        "m.room.history_visibility": 100,
                        "m.room.canonical_alias": 50,
                        "m.room.avatar": 50,
                        "m.room.tombstone": 100,
                        "m.room.server_acl": 100,
                        "m.room.encryption": 100,
                    },
                    "events_default": 0,
                    "state_default": 50,
                    "ban": 50,
                    "kick": 50,
                    "redact": 50,
                    "invite": 0,
                    "historical": 100,
                },
                state_key="",
            ),
            self._event(
                "m.room.join_rules",
                creator[0],
                {"join_rule": "public" if self.kind == "public" else "invite"},
                state_key="",
            ),
            self._event(
                "m.room.history_visibility",
                creator[0],
                {"history_visibility": "shared"},
                state_key="",
            ),
        ]
        if named:
            setup.append(self._event("m.room.name", creator[0], {"name": name}, state_key=""))
        if self.kind != "dm" and rng.random() < 0.6:
            setup.append(
                self._event(
                    "m.room.topic", creator[0], {"topic": rng.choice(_TOPICS)}, state_key=""
                )
            )
        if self.kind == "public":
            setup.append(
                self._event(
                    "m.room.canonical_alias",
                    creator[0],
                    {"alias": f"#room{self.index}:{SERVER}"},
                    state_key="",
                )
            )
        setup.extend(self._member(m) for m in members if m is not creator)

        if self.young:
            state: list[dict[str, Any]] = []
            timeline = setup
        else:
            state, timeline = setup, []
        n_timeline = events_per_room - len(state)
        if n_timeline < len(timeline) + 1:
            raise ValueError(f"events_per_room={events_per_room} is too small for a room")
        self._fill_timeline(timeline, n_timeline, members)

        unread = rng.randint(0, 12) if rng.random() < 0.4 else 0
        messages = [e for e in timeline if e["type"] == "m.room.message" and e["content"]]
        ephemeral: list[dict[str, Any]] = []
        account_data: list[dict[str, Any]] = []
        if messages and rng.random() < 0.7:
            read = messages[max(0, len(messages) - 1 - unread)]["event_id"]
            receipt: dict[str, Any] = {read: {"m.read": {OWN_USER: {"ts": self.ts - 1_000}}}}
            newest = timeline[-1]["event_id"]
            receipt.setdefault(newest, {}).setdefault("m.read", {})[others[0][0]] = {"ts": self.ts}
            ephemeral.append({"type": "m.receipt", "content": receipt})
            account_data.append({"type": "m.fully_read", "content": {"event_id": read}})
        if rng.random() < 0.05:
            account_data.append(
                {
                    "type": "m.tag",
                    "content": {"tags": {rng.choice(("m.favourite", "m.lowpriority")): {}}},
                }
            )
        summary: dict[str, Any] = {
            "m.joined_member_count": joined,
            "m.invited_member_count": rng.choice((0, 0, 0, 1)),
        }
        if not named and self.kind != "public":
            summary["m.heroes"] = [m[0] for m in others[:5]]
        room = {
            "summary": summary,
            "state": {"events": state},
            "timeline": {
                "events": timeline,
                "limited": not self.young,
                "prev_batch": f"t{self.index}-{_token(rng, 12)}_0_0",
            },
            "ephemeral": {"events": ephemeral},
            "account_data": {"events": account_data},
            "unread_notifications": {
                "notification_count": unread,
                "highlight_count": 1 if unread and rng.random() < 0.2 else 0,
            },
        }
        info = CorpusRoom(self.room_id, member_ids, timeline[-1]["event_id"], self.ts)
        direct_user = others[0][0] if self.kind == "dm" else None
        return room, info, direct_user

    def _fill_timeline(
        self,
        timeline: list[dict[str, Any]],
        n: int,
        members: list[tuple[str, str, str | None]],
    ) -> None:
        rng = self.rng
        by_id: dict[str, dict[str, Any]] = {e["event_id"]: e for e in timeline}
        messages: list[dict[str, Any]] = []
        relatable: list[dict[str, Any]] = []
        roots: list[dict[str, Any]] = []
        while len(timeline) < n:
            kind = _timeline_kind(rng.random())
            if kind == "thread" and not roots:
                kind = "message"
            sender = rng.choice(members)[0]
            if kind == "message" or not messages:
                ev = self._event("m.room.message", sender, self._message_content(self._msgtype()))
                messages.append(ev)
                if rng.random() < 0.1:
                    roots.append(ev)
            elif kind == "edit":
                target = rng.choice(messages[-10:])
                new_body = _body(rng)
                ev = self._event(
                    "m.room.message",
                    target["sender"],
                    {
                        "msgtype": "m.text",
                        "body": f"* {new_body}",
                        "m.new_content": {"msgtype": "m.text", "body": new_body},
                        "m.relates_to": {"rel_type": "m.replace", "event_id": target["event_id"]},
                    },
                )
            elif kind == "reaction":
                target = rng.choice(messages[-8:])
                ev = self._event(
                    "m.reaction",
                    sender,
                    {
                        "m.relates_to": {
                            "rel_type": "m.annotation",
                            "event_id": target["event_id"],
                            "key": rng.choice(_REACTIONS),
                        }
                    },
                )
            elif kind == "redaction":
                target = rng.choice(relatable[-12:] or messages[-12:])
                ev = self._event(
                    "m.room.redaction",
                    target["sender"],
                    {"redacts": target["event_id"], "reason": "oops"}
                    if rng.random() < 0.3
                    else {"redacts": target["event_id"]},
                )
                ev["redacts"] = target["event_id"]
                shown = by_id.get(target["event_id"])
                if shown is not None and "redacted_because" not in shown["unsigned"]:
                    # Synapse serves a redacted event stripped, with the redaction.
                    shown["content"] = {}
                    because = {k: v for k, v in ev.items() if k != "unsigned"}
                    shown["unsigned"]["redacted_because"] = copy.deepcopy(because)
            elif kind == "reply":
                target = rng.choice(messages[-15:])
                reply = _body(rng)
                quoted = str(target["content"].get("body", ""))[:40]
                ev = self._event(
                    "m.room.message",
                    sender,
                    {
                        "msgtype": "m.text",
                        "body": f"> <{target['sender']}> {quoted}\n\n{reply}",
                        "format": "org.matrix.custom.html",
                        "formatted_body": (
                            f'<mx-reply><blockquote><a href="https://matrix.to/#/x">In reply to</a> '
                            f"{quoted}</blockquote></mx-reply>{reply}"
                        ),
                        "m.relates_to": {"m.in_reply_to": {"event_id": target["event_id"]}},
                        "m.mentions": {"user_ids": [target["sender"]]},
                    },
                )
                messages.append(ev)
            elif kind == "thread":
                root = rng.choice(roots)
                ev = self._event(
                    "m.room.message",
                    sender,
                    {
                        "msgtype": "m.text",
                        "body": _body(rng),
                        "m.relates_to": {
                            "rel_type": "m.thread",
                            "event_id": root["event_id"],
                            "is_falling_back": True,
                            "m.in_reply_to": {"event_id": messages[-1]["event_id"]},
                        },
                    },
                )
            elif kind == "topic":
                ev = self._event(
                    "m.room.topic",
                    sender,
                    {"topic": rng.choice(_TOPICS)},
                    state_key="",
                )
            else:
                user = self.users[rng.randrange(len(self.users))]
                if user[0] in (m[0] for m in members):
                    continue
                members.append(user)
                ev = self._member(user)
            timeline.append(ev)
            by_id[ev["event_id"]] = ev
            if ev["type"] in ("m.room.message", "m.reaction"):
                relatable.append(ev)


def make_corpus(
    rooms: int = DEFAULT_ROOMS,
    events_per_room: int = DEFAULT_EVENTS_PER_ROOM,
    seed: int = DEFAULT_SEED,
) -> Corpus:
    """The initial /sync body of an account in ``rooms`` rooms (deterministic)."""
    rng = random.Random(seed)
    users: list[tuple[str, str, str | None]] = []
    for i in range(5_000):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        user_id = f"@{first.lower()}{i}:{SERVER}"
        avatar = _mxc(rng) if rng.random() < 0.4 else None
        users.append((user_id, f"{first} {last}", avatar))

    join: dict[str, Any] = {}
    infos: list[CorpusRoom] = []
    direct: dict[str, list[str]] = {}
    events = 0
    for index in range(rooms):
        builder = _RoomBuilder(rng, index, users)
        room, info, direct_user = builder.build(events_per_room)
        join[info.room_id] = room
        infos.append(info)
        events += len(room["state"]["events"]) + len(room["timeline"]["events"])
        if direct_user is not None:
            direct.setdefault(direct_user, []).append(info.room_id)

    body: dict[str, Any] = {
        "next_batch": f"s{seed}_{rooms}_initial",
        "rooms": {"join": join, "invite": {}, "leave": {}},
        "account_data": {
            "events": [
                {"type": "m.direct", "content": direct},
                {"type": "im.vector.setting.breadcrumbs", "content": {"recent_rooms": []}},
            ]
        },
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {"signed_curve25519": 50},
        "device_unused_fallback_key_types": ["signed_curve25519"],
    }
    return Corpus(
        body=body,
        data=encode(body),
        rooms=infos,
        events=events,
        seed=seed,
        _rng=random.Random(seed + 1),
    )


def main() -> None:
    """``python -m tests.bench.ingest_corpus``: describe the default corpus."""
    corpus = make_corpus()
    join = corpus.body["rooms"]["join"]
    kinds: dict[str, int] = {}
    for room in join.values():
        for ev in room["state"]["events"] + room["timeline"]["events"]:
            key = ev["type"]
            if key == "m.room.message":
                key += "/" + str(ev["content"].get("msgtype", "redacted"))
            kinds[key] = kinds.get(key, 0) + 1
    print(f"rooms {len(join)}  events {corpus.events}  bytes {len(corpus.data):,}")
    for key, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {key:32} {n:7}")


if __name__ == "__main__":
    main()
