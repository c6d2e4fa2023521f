"""The fixed material demo journeys are made of: names, cities, the shop's products, devices,
and how people type their email addresses and phone numbers.

Everything here is built-in (no network, no Faker) and the same for every seed; the
functions that draw from it take the generator's `random.Random`. Email domains are the
reserved `example` ones and shop URLs end in `.example`, so nothing points at real people.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    currency: str
    locale: str
    timezone: str
    cities: tuple[str, ...]
    ip_prefixes: tuple[str, ...]


REGIONS = {
    "GB": Region(
        "GB",
        "GBP",
        "en-GB",
        "Europe/London",
        ("London", "Manchester", "Birmingham", "Leeds", "Glasgow", "Edinburgh", "Bristol",
         "Liverpool", "Cardiff", "Belfast", "Brighton", "Nottingham", "Sheffield", "Oxford",
         "Cambridge", "York", "Bath", "Newcastle upon Tyne"),
        ("81.2", "86.140", "92.40", "109.150", "2.24", "90.200"),
    ),
    "US": Region(
        "US",
        "USD",
        "en-US",
        "America/New_York",
        ("New York", "Los Angeles", "Chicago", "Houston", "Philadelphia", "San Francisco",
         "Seattle", "Boston", "Austin", "Denver", "Atlanta", "Miami", "Portland", "Minneapolis"),
        ("73.12", "24.5", "98.210", "67.180", "71.90", "174.62"),
    ),
}  # fmt: skip

FIRST_NAMES = (
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Grace", "Freya", "Lily", "Emily", "Sophie",
    "Chloe", "Priya", "Aisha", "Zara", "Hannah", "Lucy", "Ella", "Ruby", "Maya", "Nia", "Jo",
    "Sam", "Alex", "Noah", "Oliver", "George", "Leo", "Arthur", "Harry", "Jack", "Charlie",
    "Theo", "Oscar", "James", "Ethan", "Mohammed", "Ravi", "Daniel", "Lucas", "Mateo", "Kwame",
    "Tom", "Ben", "Seán", "Liam", "Aaron", "Wei", "Hiro", "Elena", "Camille", "Sofia", "Inès",
    "Ana", "Fatima", "Yusuf", "Marcus", "Chen", "Olu", "Kai", "Rosa", "Zoë", "Joaquín",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Khan", "Singh", "Ali", "O'Brien", "Murphy", "Kelly", "Nguyen",
    "Garcia", "Martínez", "Rodriguez", "Lee", "Kim", "Chen", "Okafor", "Mensah", "Novak",
    "Rossi", "Dubois", "Müller", "Schmidt", "Silva", "Costa", "Hughes", "Edwards", "Baker",
    "Turner", "Hill", "Moore", "Cooper", "Ward", "Morris", "King", "Scott", "Adams",
    "Campbell", "Mitchell", "Ahmed", "Lewis", "Young", "Ó Súilleabháin", "van der Berg",
)  # fmt: skip

EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example", "inbox.example")

CAMPAIGNS = (
    {"id": "cmp-aw26-launch", "name": "aw26-launch", "source": "newsletter", "landing": "knitwear"},
    {"id": "cmp-denim-week", "name": "denim-week", "source": "instagram", "landing": "jeans"},
    {"id": "cmp-boots-edit", "name": "boots-edit", "source": "newsletter", "landing": "shoes"},
    {"id": "cmp-coat-sale", "name": "coat-sale", "source": "google", "landing": "outerwear"},
    {"id": "cmp-gift-guide", "name": "gift-guide", "source": "tiktok", "landing": "accessories"},
)
ACCOUNTS = (
    ("acct-hollis-vane", "Hollis & Vane Ltd", "trade"),
    ("acct-northlight", "Northlight Boutiques", "wholesale"),
    ("acct-marlow-theatre", "Marlow Theatre Costume Dept", "trade"),
    ("acct-kestrel-events", "Kestrel Events", "corporate-gifting"),
    ("acct-byre-and-co", "Byre & Co", "wholesale"),
    ("acct-larkspur-hotels", "Larkspur Hotels", "corporate-gifting"),
)
TICKET_SUBJECTS = (
    "Where is my order?",
    "Item arrived damaged",
    "Wrong size sent",
    "How do I return an item?",
    "Refund not received",
    "Change delivery address",
)

_LETTER = ("XS", "S", "M", "L", "XL")
_DRESS = ("6", "8", "10", "12", "14", "16")
_WAIST = ("24", "26", "28", "30", "32", "34")
_SHOE = ("37", "38", "39", "40", "41", "42")
# category: (sku code, products, lowest price, highest price, sizes)
_CATEGORIES: dict[str, tuple[str, tuple[str, ...], int, int, tuple[str, ...]]] = {
    "Dresses": ("DR", ("Linen Wrap Dress", "Satin Slip Dress", "Floral Midi Dress",
                       "Jumper Dress", "Tiered Maxi Dress"), 45, 120, _DRESS),
    "Tops": ("TP", ("Organic Cotton Tee", "Breton Top", "Silk Cami", "Oversized Shirt",
                    "Ribbed Tank"), 15, 60, _LETTER),
    "Jeans": ("JN", ("Straight Leg Jeans", "Wide Leg Jeans", "Slim Jeans", "Mom Jeans",
                     "Bootcut Jeans"), 40, 95, _WAIST),
    "Knitwear": ("KN", ("Merino Crew Jumper", "Cashmere Cardigan", "Cable Knit Sweater",
                        "Roll Neck Jumper"), 50, 180, _LETTER),
    "Outerwear": ("OW", ("Wool Blend Coat", "Quilted Jacket", "Trench Coat", "Denim Jacket",
                         "Puffer Jacket"), 80, 250, _LETTER),
    "Shoes": ("SH", ("Leather Ankle Boots", "White Trainers", "Suede Loafers",
                     "Strappy Sandals", "Chelsea Boots"), 45, 160, _SHOE),
    "Accessories": ("AC", ("Leather Tote Bag", "Silk Scarf", "Wool Beanie", "Canvas Belt",
                           "Gold Hoop Earrings"), 12, 90, ("One Size",)),
}  # fmt: skip
_COLOURS = ("Black", "Ivory", "Navy", "Sage", "Camel", "Rust", "Grey Marl", "Dusty Pink")
_BRANDS = ("Tessera Studio", "Northline", "Atelier Vey", "Common Thread")


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    sku: str
    name: str
    category: str
    brand: str
    price: float
    sizes: tuple[str, ...]
    slug: str

    def properties(self, currency: str, size: str) -> dict[str, Any]:
        """The Segment ecommerce spec's product fields for this product in one size."""
        return {
            "product_id": self.id,
            "sku": f"{self.sku}-{size.replace(' ', '')}",
            "name": self.name,
            "category": self.category,
            "brand": self.brand,
            "variant": size,
            "price": self.price,
            "currency": currency,
        }


def _catalogue() -> tuple[Product, ...]:
    rng = random.Random(20260901)  # fixed: the shop sells the same things whatever the seed
    products: list[Product] = []
    for category, (code, names, low, high, sizes) in _CATEGORIES.items():
        for name in names:
            for colour in rng.sample(_COLOURS, 2):
                number = 1001 + len(products)
                price = rng.randint(low, high) - 0.01
                full = f"{colour} {name}"
                slug = re.sub(r"[^a-z0-9]+", "-", full.lower()) + f"-{number}"
                product = Product(
                    f"prod-{number}", f"TS-{code}-{number}", full, category,
                    rng.choice(_BRANDS), price, sizes, slug,
                )  # fmt: skip
                products.append(product)
    return tuple(products)


PRODUCTS = _catalogue()

_LIBRARIES = {
    "web": {"name": "analytics.js", "version": "next-1.74.0"},
    "ios": {"name": "analytics-ios", "version": "4.1.8"},
    "android": {"name": "com.rudderstack.android.sdk.core", "version": "1.20.1"},
}
_APP = {"name": "Tessera Fashion", "version": "3.12.0", "build": "3120"}
_DESKTOP_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:130.0) Gecko/20100101 Firefox/130.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/128.0.0.0 Safari/537.36 Edg/128.0.2739.42",
)
_MOBILE_UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/128.0.6613.88 Mobile Safari/537.36",
)
_APPLE_MODELS = {
    "ios": (("iPhone15,2", "iPhone"), ("iPhone16,1", "iPhone"), ("iPhone14,5", "iPhone")),
    "tablet": (("iPad13,18", "iPad"), ("iPad14,1", "iPad")),
}
_ANDROID_MODELS = (("Google", "Pixel 8"), ("samsung", "SM-S921B"), ("OnePlus", "CPH2581"))


def device_context(
    rng: random.Random, kind: str, device_id: str, ip: str, region: Region
) -> dict[str, Any]:
    """What an SDK on this kind of device puts in every message's `context`."""
    context: dict[str, Any] = {"ip": ip, "locale": region.locale, "timezone": region.timezone}
    if kind in ("desktop", "mobile_web"):
        context["library"] = _LIBRARIES["web"]
        context["device"] = {"id": device_id, "type": "web"}
        context["userAgent"] = rng.choice(_DESKTOP_UAS if kind == "desktop" else _MOBILE_UAS)
        return context
    context["app"] = _APP
    context["network"] = {"wifi": rng.random() < 0.6}
    if kind == "android":
        maker, model = rng.choice(_ANDROID_MODELS)
        version = rng.choice(("13", "14", "15"))
        context["library"] = _LIBRARIES["android"]
        context["device"] = {
            "id": device_id,
            "type": "android",
            "manufacturer": maker,
            "model": model,
        }
        context["os"] = {"name": "Android", "version": version}
        context["userAgent"] = f"Dalvik/2.1.0 (Linux; U; Android {version}; {model})"
        return context
    model, name = rng.choice(_APPLE_MODELS["tablet" if kind == "tablet" else "ios"])
    version = rng.choice(("17.5.1", "17.6", "18.0"))
    context["library"] = _LIBRARIES["ios"]
    context["device"] = {
        "id": device_id,
        "type": "ios",
        "manufacturer": "Apple",
        "model": model,
        "name": name,
    }
    context["os"] = {"name": "iPadOS" if kind == "tablet" else "iOS", "version": version}
    context["userAgent"] = f"TesseraFashion/3.12.0 ({name}; iOS {version}; Scale/3.00)"
    return context


def person_name(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def _ascii(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", plain.lower())


def email_address(rng: random.Random, first: str, last: str, used: set[str]) -> str:
    """A new canonical (lower-case) address for this name that nobody else has."""
    f, l = _ascii(first) or "user", _ascii(last) or "shopper"  # noqa: E741
    local = rng.choice((f"{f}.{l}", f"{f}{l}", f"{f[0]}{l}", f"{f}_{l}", f"{l}.{f}"))
    if rng.random() < 0.4:
        local += str(rng.randint(1, 99))
    domain = rng.choice(EMAIL_DOMAINS)
    address, n = f"{local}@{domain}", 1
    while address in used:  # common names collide: number them as mail providers do
        n += 1
        address = f"{local}{n}@{domain}"
    used.add(address)
    return address


def messy_email(rng: random.Random, email: str) -> str:
    """The address as a person might type it: a quarter of the time with capitals or spaces."""
    roll = rng.random()
    if roll < 0.75:
        return email
    local, _, domain = email.partition("@")
    pretty = ".".join(part.capitalize() for part in local.split(".")) + "@" + domain.capitalize()
    if roll < 0.85:
        return pretty
    if roll < 0.92:
        return email.upper()
    return f"  {pretty} " if roll < 0.97 else f"{email} "


def new_phone(rng: random.Random, region: str, used: set[str]) -> str:
    """A new E.164 number, unique in `used`: a mobile or a big-city landline."""
    while True:
        if region == "US":
            area = rng.choice(("212", "646", "718", "415", "312", "617", "206", "512", "303"))
            number = f"+1{area}{rng.randint(200, 999)}{rng.randrange(10_000):04d}"
        elif rng.random() < 0.7:
            # Not 076 (pagers) nor 07700/07911 (partly unallocated): libphonenumber, which
            # resolvers use, rightly calls those numbers invalid.
            prefix = f"7{rng.choice('45789')}{rng.randrange(100):02d}"
            if prefix in ("7700", "7911"):
                continue
            number = f"+44{prefix}{rng.randrange(1_000_000):06d}"
        else:
            number = f"+4420{rng.choice('378')}{rng.randrange(10_000_000):07d}"
        if number not in used:
            used.add(number)
            return number


def phone_variant(rng: random.Random, e164: str, domestic: bool) -> str:
    """`e164` as typed into a form: national formats at home, international ones abroad."""
    home: tuple[str, ...]
    abroad: tuple[str, ...]
    if e164.startswith("+1"):
        a, b, c = e164[2:5], e164[5:8], e164[8:]
        home = (f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"{a}{b}{c}", f"1-{a}-{b}-{c}")
        abroad = (f"+1 {a}-{b}-{c}", f"+1 ({a}) {b}-{c}", e164, f"+1 {a} {b} {c}")
    else:
        digits = e164[3:]
        cut = 4 if digits.startswith("7") else 2  # 07xxx xxxxxx, 020 xxxx xxxx
        head, tail = digits[:cut], digits[cut:]
        tail_spaced = tail if cut == 4 else f"{tail[:4]} {tail[4:]}"
        home = (f"0{head} {tail_spaced}", f"0{head}{tail}", f"(0{head}) {tail_spaced}")
        abroad = (f"+44 {head} {tail_spaced}", e164, f"+44 (0){head} {tail_spaced}")
    return rng.choice(home + abroad if domestic else abroad)
