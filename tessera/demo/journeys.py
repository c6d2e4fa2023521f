"""Seeded customer journeys for a fashion shop, with the ground truth of who is really who.

`generate(seed=..., people=...)` returns a `Dataset`: Segment-spec messages in timestamp
order (what `tessera demo`, the tests and the benchmarks send), the people behind them, and
`truth`, which maps every identifier the messages carry (`"email:jo@example.com"`) to the
person it belongs to, so an identity resolver can be scored with `pairwise_precision_recall`.

The output depends only on the arguments: one `random.Random(seed)` drives everything and
the start date defaults to a fixed day. Messages share read-only sub-objects (a device's
`context.library`, `context.device`, ...) to keep 100,000 people in memory; copy a message
deeply before mutating anything nested in it.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from typing import Any, TypeVar

from tessera.demo.catalog import (
    ACCOUNTS,
    CAMPAIGNS,
    PRODUCTS,
    REGIONS,
    TICKET_SUBJECTS,
    Product,
    device_context,
    email_address,
    messy_email,
    new_phone,
    person_name,
    phone_variant,
)
from tessera.demo.truth import Dataset, Message, Person

DEFAULT_START = datetime(2026, 9, 1, tzinfo=UTC)
MAX_EVENTS = 60  # per person, server-side events included
SHOP = "https://shop.tessera.example"
T = TypeVar("T")
_DAY = 86_400_000  # milliseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SERVER = {"name": "analytics-python", "version": "2.3.3"}
_SIGNUP_COST = 4  # landing, Sign Up page, Signed Up, identify: reserved until they happen
_TABLET_COST = 5  # sign in (2), landing, one product view (2): the family tablet's session


@dataclass(slots=True)
class _Device:
    kind: str
    web: bool
    device_id: str
    anonymous_id: str
    context: dict[str, Any]  # the per-device part of every message's context
    role: str  # primary, login (signs in later), alias (linked server-side), never, shared
    signed_in: str | None = None  # the userId the device is signed in as
    first_used: int = -1


@dataclass(slots=True)
class _Journey:
    person: Person
    devices: list[_Device]
    budget: int
    domestic: bool
    will_identify: bool
    reserved: int = 0
    count: int = 0
    signup_ts: int = -1
    extras: list[str] = field(default_factory=list)
    tablet_used: bool = False

    @property
    def room(self) -> int:
        return self.budget - self.count - self.reserved


class _Builder:
    """Generates people one after another; `messages` stay in generation order until sorted."""

    def __init__(self, rng: random.Random, region: str, start: datetime, days: int, tag: str):
        self.rng = rng
        self.random = rng.random
        self.region = REGIONS[region]
        self.start_ms = int((start - _EPOCH) / timedelta(milliseconds=1))
        self.end_ms = self.start_ms + days * _DAY
        self.tag = tag
        self.messages: list[Message] = []
        self.times: list[int] = []
        self.owners: list[int] = []
        self.truth: dict[str, str] = {}
        self.shared: set[str] = set()
        self.canonical: dict[str, str] = {}
        self.used: set[str] = set()
        self.minutes: dict[int, str] = {}
        self.people: list[Person] = []
        self.t = 0  # the clock of the session being generated

    def finish(self, seed: int, region: str) -> Dataset:
        # A stable sort: a person's events at the same millisecond keep their order.
        order = sorted(range(len(self.messages)), key=self.times.__getitem__)
        return Dataset(
            seed=seed,
            region=region,
            messages=[self.messages[i] for i in order],
            owners=[self.owners[i] for i in order],
            people=self.people,
            truth=self.truth,
            shared=self.shared,
            canonical=self.canonical,
        )

    # -- identifiers and output -------------------------------------------------------

    # random.choice and randint cost about a microsecond; these do the same job in a tenth.
    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.random() * len(options))]

    def between(self, low: int, high: int) -> int:
        return low + int(self.random() * (high - low + 1))

    def unique(self, upper: bool = False) -> str:
        while True:
            h = f"{self.rng.getrandbits(128):032x}"
            text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
            text = text.upper() if upper else text
            if text not in self.used:
                self.used.add(text)
                return text

    def claim(self, person: Person, kind: str, value: str, canonical: str | None = None) -> None:
        key = f"{kind}:{value}"
        if key in self.shared:
            return
        owner = self.truth.setdefault(key, person.key)
        if owner != person.key:  # a generator bug, not bad luck: every identifier is unique
            raise AssertionError(f"{key} emitted for {owner} and {person.key}")
        if canonical is not None and canonical != value:
            self.canonical[key] = f"{kind}:{canonical}"

    def iso(self, ms: int) -> str:
        """`2026-09-01T10:00:00.000Z`; strftime runs once per minute, not once per message."""
        minute, rest = divmod(ms, 60_000)
        prefix = self.minutes.get(minute)
        if prefix is None:
            moment = _EPOCH + timedelta(minutes=minute)
            prefix = self.minutes[minute] = moment.strftime("%Y-%m-%dT%H:%M:")
        seconds, millis = divmod(rest, 1000)
        return f"{prefix}{seconds:02d}.{millis:03d}Z"

    def emit(self, j: _Journey, ts: int, message: Message) -> None:
        message["messageId"] = f"{self.tag}-{len(self.messages):08d}"
        message["timestamp"] = self.iso(ts)
        self.messages.append(message)
        self.times.append(ts)
        self.owners.append(j.person.index)
        j.count += 1

    def on_device(self, j: _Journey, dev: _Device, kind: str, **fields: Any) -> None:
        """A message sent by the device's SDK, `self.t` advanced to a few seconds later."""
        self.t += self.between(3_000, 75_000)
        # messageId and timestamp are filled by emit; listed first so they print first.
        message: Message = {"type": kind, "messageId": "", "timestamp": "", "anonymousId": ""}
        message["anonymousId"] = dev.anonymous_id
        if dev.signed_in is not None:
            message["userId"] = dev.signed_in
        message.update(fields)
        message["context"] = {**dev.context, **fields.get("context", {})}
        self.emit(j, self.t, message)

    def server(self, j: _Journey, ts: int, kind: str, email: str | None, **fields: Any) -> None:
        """A message from the shop's back end or email provider: userId only, no device."""
        context: dict[str, Any] = {"library": _SERVER}
        if email is not None:
            context["traits"] = {"email": email}
            self.claim(j.person, "email", email, email.strip().lower())
        message = {"type": kind, "messageId": "", "timestamp": "", "userId": j.person.user_id}
        self.emit(j, ts, {**message, "context": context, **fields})

    # -- people -----------------------------------------------------------------------

    def person(self, index: int, key: str, household: int, tablet: _Device | None) -> None:
        rng = self.rng
        domestic = rng.random() < 0.92
        region = self.region if domestic else REGIONS["US" if self.region.code == "GB" else "GB"]
        first, last = person_name(rng)
        person = Person(key, index, first, last, self.pick(region.cities), region.code, household)
        self.people.append(person)
        identify = tablet is not None or rng.random() < 0.70
        budget = 8 + int(52 * rng.random() ** 2) if identify else 5 + int(25 * rng.random() ** 2)
        j = _Journey(person, [], min(budget, MAX_EVENTS), domestic, identify)
        for n in range(rng.choices((1, 2, 3), (55, 33, 12))[0]):
            role = "primary" if n == 0 else rng.choices(("login", "alias", "never"), (7, 2, 2))[0]
            j.devices.append(
                self.device(self.pick(("desktop", "mobile_web", "ios", "android")), role)
            )
        if tablet is not None:
            j.devices.append(tablet)
        if identify:
            person.phone = new_phone(rng, region.code, self.used) if rng.random() < 0.75 else None
            j.extras = self.plan_extras(j)
            j.reserved = _SIGNUP_COST + len(j.extras) + j.extras.count("newsletter")
        self.sessions(j)
        self.after_sessions(j)
        for dev in j.devices:
            if dev.first_used >= 0:
                person.anonymous_ids.append(dev.anonymous_id)
                person.device_ids.append(dev.device_id)

    def device(self, kind: str, role: str) -> _Device:
        rng = self.rng
        web = kind in ("desktop", "mobile_web")
        device_id = self.unique(upper=kind in ("ios", "tablet"))
        anonymous_id = self.unique(upper=kind in ("ios", "tablet"))
        ip = f"{self.pick(self.region.ip_prefixes)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        context = device_context(rng, kind, device_id, ip, self.region)
        return _Device(kind, web, device_id, anonymous_id, context, role)

    def plan_extras(self, j: _Journey) -> list[str]:
        rng = self.rng
        extras = ["newsletter"] * rng.choices((0, 1, 2, 3), (50, 20, 18, 12))[0]
        for extra, chance in (("email_change", 0.10), ("phone_update", 0.15), ("support", 0.12)):
            if rng.random() < chance:
                extras.append(extra)
        if rng.random() < 0.04:
            extras.append("group")
        extras.extend("alias" for dev in j.devices if dev.role == "alias")
        tablet = _TABLET_COST if any(dev.role == "shared" for dev in j.devices) else 0
        j.budget = min(MAX_EVENTS, max(j.budget, _SIGNUP_COST + 2 * len(extras) + tablet + 4))
        return extras

    # -- device sessions --------------------------------------------------------------

    def sessions(self, j: _Journey) -> None:
        rng = self.rng
        count = self.between(2, 8) if j.will_identify else self.between(1, 4)
        first = self.start_ms + int(rng.random() * (self.end_ms - self.start_ms) * 0.5)
        last = self.end_ms - 6 * 3_600_000  # sessions are short: everything ends before end_ms
        starts = sorted(self.between(first, max(first, last)) for _ in range(count))
        signup_at = self.pick((0, 0, 1, 1, 2, 3))
        tablet = next((dev for dev in j.devices if dev.role == "shared"), None)
        if tablet is not None:  # both members of the household do use their tablet
            j.reserved += _TABLET_COST
        clock = 0
        for n, start in enumerate(starts):
            signup = j.will_identify and j.signup_ts < 0 and (n >= signup_at or n == count - 1)
            dev = j.devices[0] if n == 0 or signup else self.pick(j.devices)
            if dev is tablet and j.signup_ts < 0:
                dev = j.devices[0]  # the tablet is only ever used signed in
            login = dev.role in ("login", "shared") and j.signup_ts >= 0
            login = login and (dev is tablet or dev.signed_in is None)
            reserved = signup or (dev is tablet and not j.tablet_used)
            if not reserved and j.room < 3 + 2 * login:
                continue
            self.t = max(start, clock + 600_000)
            self.session(j, dev, signup, login)
            clock = self.t
        if tablet is not None and not j.tablet_used and j.signup_ts >= 0:
            self.t = clock + self.between(600_000, 3 * 3_600_000)
            self.session(j, tablet, False, True)

    def session(self, j: _Journey, dev: _Device, signup: bool, login: bool) -> None:
        rng = self.rng
        if dev.first_used < 0:
            dev.first_used = self.t
        if dev.role == "shared" and not j.tablet_used:
            j.reserved -= _TABLET_COST
            j.tablet_used = True
        else:
            self.claim(j.person, "anonymous_id", dev.anonymous_id)
            self.claim(j.person, "device_id", dev.device_id)
        if signup:
            j.reserved -= 1
        if login and not dev.web:  # an app opens on its sign-in screen; a site on a page
            self.login(j, dev)
        self.landing(j, dev)
        if login and dev.web:
            self.login(j, dev)
        for _ in range(self.between(2, 6) if j.count < 3 else self.between(1, 5)):
            if j.room < 2:
                break
            product = self.pick(PRODUCTS)
            if j.count >= 3 and rng.random() < 0.1 and j.room >= 3:
                query = {"query": f"{product.name.split()[-1].lower()}"}
                self.on_device(j, dev, "track", event="Products Searched", properties=query)
            self.view(j, dev, product)
        if signup:
            self.signup(j, dev)
        cart = [self.pick(PRODUCTS) for _ in range(self.between(1, 2))]
        # Signed-in shoppers fill carts more often; only they can pay (no guest checkout).
        if rng.random() < (0.5 if dev.signed_in else 0.35) and j.room >= len(cart) + 1:
            for product in cart:
                self.product_event(j, dev, "Product Added", product, quantity=1)
            details = self.cart(cart)
            self.on_device(j, dev, "track", event="Cart Viewed", properties=details)
            if dev.signed_in is not None and rng.random() < 0.7 and j.room >= 2:
                self.order(j, dev, details)
            elif rng.random() < 0.3 and j.room >= 1:  # abandoned at checkout, else in the cart
                self.on_device(j, dev, "track", event="Checkout Started", properties=details)
        if dev.role == "shared":
            dev.signed_in = None  # family members sign out of the shared tablet

    def login(self, j: _Journey, dev: _Device) -> None:
        """Signing in on another device: identify with the userId and this device's anonymousId
        is what stitches the device to the person."""
        dev.signed_in = j.person.user_id
        self.on_device(j, dev, "identify")
        self.on_device(j, dev, "track", event="Signed In", properties={"method": "password"})

    def navigate(self, j: _Journey, dev: _Device, name: str, path: str, **props: Any) -> None:
        if not dev.web:
            self.on_device(j, dev, "screen", name=name, properties=props)
            return
        referrer = dev.context["page"]["url"] if dev.context.get("page") else ""
        page = {"path": path, "referrer": referrer, "search": "", "title": f"{name} | Tessera"}
        page["url"] = SHOP + path
        if path == "/" and self.rng.random() < 0.25:
            campaign = self.pick(CAMPAIGNS)
            page["search"] = f"?utm_source={campaign['source']}&utm_campaign={campaign['name']}"
            page["url"] += page["search"]
        dev.context["page"] = page
        self.on_device(j, dev, "page", name=name, properties={**page, **props})

    def landing(self, j: _Journey, dev: _Device) -> None:
        dev.context.pop("page", None)  # a visit starts afresh, not from last week's page
        if self.rng.random() < 0.6:
            self.navigate(j, dev, "Home", "/")
        else:
            category = self.pick(PRODUCTS).category
            self.navigate(j, dev, category, f"/c/{category.lower()}", category=category)

    def view(self, j: _Journey, dev: _Device, product: Product) -> None:
        self.navigate(j, dev, "Product", f"/products/{product.slug}", product_id=product.id)
        self.product_event(j, dev, "Product Viewed", product)

    def product_event(
        self, j: _Journey, dev: _Device, event: str, product: Product, **extra: Any
    ) -> None:
        props = product.properties(self.region.currency, self.pick(product.sizes))
        self.on_device(j, dev, "track", event=event, properties={**props, **extra})

    def cart(self, cart: list[Product]) -> dict[str, Any]:
        products = [
            {"product_id": p.id, "sku": p.sku, "name": p.name, "price": p.price, "quantity": 1}
            for p in cart
        ]
        value = round(sum(p.price for p in cart), 2)
        return {
            "cart_id": f"cart-{len(self.messages):08d}",
            "value": value,
            "currency": self.region.currency,
            "products": products,
        }

    def signup(self, j: _Journey, dev: _Device) -> None:
        rng, person = self.rng, j.person
        j.reserved -= _SIGNUP_COST - 1
        person.user_id = f"cus_{person.index:x}{rng.getrandbits(24):06x}"
        email = email_address(rng, person.first_name, person.last_name, self.used)
        person.emails.append(email)
        typed = messy_email(rng, email)
        self.navigate(j, dev, "Sign Up", "/account/register")
        dev.signed_in = person.user_id
        self.on_device(j, dev, "track", event="Signed Up", properties={"method": "email"})
        traits: dict[str, Any] = {
            "email": typed,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "city": person.city,
            "country": person.country,
            "created_at": self.iso(self.t),
        }
        self.claim(person, "user_id", person.user_id)
        self.claim(person, "email", typed, email)
        if person.phone is not None:
            traits["phone"] = phone_variant(rng, person.phone, j.domestic)
            self.claim(person, "phone", traits["phone"], person.phone)
        if dev.kind == "android":  # RudderStack's Android SDK sends traits in context.traits
            self.on_device(j, dev, "identify", context={"traits": traits})
        else:
            self.on_device(j, dev, "identify", traits=traits)
        j.signup_ts = self.t

    def order(self, j: _Journey, dev: _Device, details: dict[str, Any]) -> None:
        rng = self.rng
        self.on_device(j, dev, "track", event="Checkout Started", properties=details)
        order_id = f"ord-{len(self.messages):08d}"
        shipping = 0.0 if details["value"] >= 50 else 3.95
        total = round(details["value"] + shipping, 2)
        completed = {
            **details,
            "order_id": order_id,
            "total": total,
            "revenue": details["value"],
            "shipping": shipping,
            "tax": round(details["value"] / 6, 2),
        }
        self.on_device(j, dev, "track", event="Order Completed", properties=completed)
        refunded_at = self.t + self.between(2, 20) * _DAY
        if rng.random() < 0.12 and j.room >= 1 and refunded_at < self.end_ms:
            refund = {"order_id": order_id, "total": total, "currency": self.region.currency}
            self.server(j, refunded_at, "track", None, event="Order Refunded", properties=refund)

    # -- the back end, after sign-up ----------------------------------------------------

    def after_sessions(self, j: _Journey) -> None:
        """Newsletters, support, profile changes, B2B accounts and aliases, in time order."""
        rng, person = self.rng, j.person
        low, high = j.signup_ts + 60_000, self.end_ms - 1
        if person.user_id is None or low >= high:
            return
        email = person.emails[0]
        for ts, extra in sorted((self.between(low, high), extra) for extra in j.extras):
            if extra == "newsletter":
                campaign = self.pick(CAMPAIGNS)
                props = {"campaign_id": campaign["id"], "campaign_name": campaign["name"]}
                self.server(j, ts, "track", email, event="Email Opened", properties=props)
                clicked = ts + self.between(5_000, 3_600_000)
                if rng.random() < 0.4 and clicked < self.end_ms:
                    props = {**props, "link_url": f"{SHOP}/c/{campaign['landing']}"}
                    self.server(
                        j, clicked, "track", email, event="Email Link Clicked", properties=props
                    )
            elif extra == "email_change":
                email = email_address(rng, person.first_name, person.last_name, self.used)
                person.emails.append(email)
                typed = messy_email(rng, email)
                self.claim(person, "email", typed, email)
                self.server(j, ts, "identify", None, traits={"email": typed})
            elif extra == "phone_update":
                if person.phone is None:
                    person.phone = new_phone(rng, person.country, self.used)
                phone = phone_variant(rng, person.phone, j.domestic)
                self.claim(person, "phone", phone, person.phone)
                self.server(j, ts, "identify", None, traits={"phone": phone})
            elif extra == "support":
                ticket = {
                    "ticket_id": f"T-{len(self.messages):07d}",
                    "subject": self.pick(TICKET_SUBJECTS),
                    "channel": self.pick(("email", "chat", "phone")),
                }
                self.server(j, ts, "track", email, event="Support Ticket Opened", properties=ticket)
            elif extra == "group":
                group_id, name, plan = self.pick(ACCOUNTS)
                person.account = group_id
                traits = {"name": name, "plan": plan, "industry": "Retail"}
                self.server(j, ts, "group", None, groupId=group_id, traits=traits)
            elif extra == "alias":
                self.alias(j, ts)

    def alias(self, j: _Journey, ts: int) -> None:
        """Links a device the person never signed in on, e.g. from a magic link opened there."""
        for dev in j.devices:
            if dev.role == "alias" and 0 <= dev.first_used < ts:
                dev.role = "aliased"
                self.server(j, ts, "alias", None, previousId=dev.anonymous_id)
                return


def generate(
    *,
    seed: int,
    people: int,
    start: datetime | None = None,
    days: int = 60,
    region: str = "US",
) -> Dataset:
    """`people` customers' journeys over `days` days from `start` (2026-09-01 UTC by default).

    `region` ("US" or "GB") is the shop's home: its currency, cities and the national phone
    formats its customers type; about 8% of customers come from the other region and type
    their numbers in international form. The default, US, matches Tessera's default
    TESSERA_IDENTITY_PHONE_REGION, so national numbers parse; for "GB", set it to GB too.
    Deterministic for the same arguments.
    """
    if people < 0 or days < 1:
        raise ValueError("people must be >= 0 and days >= 1")
    if region not in REGIONS:
        raise ValueError(f"region must be one of {sorted(REGIONS)}, got {region!r}")
    start = DEFAULT_START if start is None else start
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    # messageIds differ between datasets, so two demo runs into one source are not deduped.
    tag = blake2b(f"{seed}|{people}|{start.isoformat()}|{days}|{region}".encode(), digest_size=5)
    rng = random.Random(seed)
    builder = _Builder(rng, region, start, days, f"demo-{tag.hexdigest()}")
    width = max(4, len(str(people - 1)))
    # Millions of new dicts and nothing to free: the cyclic GC would only rescan them, which
    # costs a third of the run at 100,000 people.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _people(builder, people, width)
    finally:
        if collecting:
            gc.enable()
    return builder.finish(seed, region)


def _people(builder: _Builder, people: int, width: int) -> None:
    rng, index = builder.rng, 0
    while index < people:
        # About 3% of households are couples who also share a signed-in family tablet.
        if index + 1 < people and rng.random() < 0.03:
            tablet = builder.device("tablet", "shared")
            builder.shared.update(
                {f"anonymous_id:{tablet.anonymous_id}", f"device_id:{tablet.device_id}"}
            )
            for member in (index, index + 1):
                builder.person(member, f"person-{member:0{width}d}", index, tablet)
            index += 2
        else:
            builder.person(index, f"person-{index:0{width}d}", index, None)
            index += 1
