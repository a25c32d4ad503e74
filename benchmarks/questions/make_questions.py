"""Generate the natural-question benchmark: facts as people write them, questions as people ask.

Each fact comes with the answer a reply must contain and two questions worded differently from
the fact (`question` and `rephrased`); `unrelated` questions share no subject with any fact.
Deterministic (seeded); writes benchmarks/questions/questions.json:

    python benchmarks/questions/make_questions.py

The facts are counterfactual or invented (people, places, codes), so the base model cannot
answer them from its own knowledge and a forgotten fact's answer must disappear.

`--set repeats` writes benchmarks/questions/repeats.json instead: facts whose answers repeat
tokens (years such as 1999, phone numbers and door codes with repeated digit pairs, amounts
with runs of zeros, dates such as 11 November 2011), the hard case for the sequence channel.
`--set forms` writes benchmarks/questions/forms.json: facts written in the other forms people
use, a question and its answer, a labelled note, a first-person note, a definition of an invented
word, a clause before the subject, an appointment with a time.
`--set notes` writes benchmarks/questions/notes.json: short notes written by hand (first person,
labelled, two things in one line) in words unlike the scope stage's note templates and the forms
set, each asked the plain way and a way that needs the note read, not matched.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

FIRST = ["Anna", "Marek", "Priya", "Tomas", "Lena", "Kofi", "Ines", "Yuki", "Omar", "Sofia", "Henrik", "Amara",
         "Lucas", "Mei", "Rafael", "Elif", "Jonas", "Nadia", "Pablo", "Greta", "Ivan", "Leila", "Mateo", "Hana",
         "Oskar", "Zara", "Emil", "Chiara", "Darius", "Freya"]
LAST = ["Keller", "Novak", "Nair", "Berg", "Okafor", "Duarte", "Tanaka", "Haddad", "Lindqvist", "Moreau",
        "Petrov", "Silva", "Kowalski", "Fischer", "Rossi", "Yilmaz", "Jensen", "Costa", "Weber", "Adeyemi",
        "Horvat", "Larsen", "Santos", "Varga", "Ito", "Brandt", "Quinn", "Mendez", "Olsen", "Dragan"]
CITIES = ["Graz", "Porto", "Lyon", "Tampere", "Bergen", "Utrecht", "Kraków", "Valencia", "Turin", "Ghent",
          "Aarhus", "Brno", "Leipzig", "Bilbao", "Malmö", "Salzburg", "Cork", "Split", "Riga", "Basel"]
INVENTED_PLACES = ["Virelon", "Ostrava Nova", "Kelmarsh", "Duneholt", "Brackwater", "Solvenna", "Marrowby",
                   "Tiberon", "Ashgrove", "Quillfield", "Norhaven", "Eskerby", "Felmont", "Caldris", "Yarrowmere"]
REGIONS = ["Ostmark", "Westerlund", "Galdria", "Pelham", "Northreach", "Carrow", "Lanvale", "Sudmoor"]
COUNTRIES = ["Veloria", "Kastavia", "Dormund", "Aldessa", "Brevania", "Tarsova", "Mirelia", "Quorland"]
JOBS = ["dentist", "pilot", "carpenter", "pharmacist", "architect", "beekeeper", "translator", "surveyor",
        "locksmith", "radiologist"]
FOODS = ["peanuts", "shellfish", "sesame", "strawberries", "gluten", "kiwi", "mustard", "celery"]
COLOURS = ["teal", "crimson", "ochre", "lavender", "olive", "turquoise", "maroon", "amber"]
LANGUAGES = ["Portuguese", "Finnish", "Swahili", "Hungarian", "Tagalog", "Welsh", "Icelandic", "Korean"]
CARS = ["Volvo", "Subaru", "Peugeot", "Skoda", "Tesla", "Fiat", "Mazda", "Renault"]
ANIMALS = ["giraffe", "tapir", "snow leopard", "otter", "red panda", "rhinoceros", "flamingo", "orangutan"]
PET_NAMES = ["Biscuit", "Marlowe", "Pepper", "Juniper", "Tofu", "Ziggy", "Clementine", "Waffles"]
TEAMS = ["payments", "security", "mobile", "data platform", "design", "support", "logistics", "research"]
EVENTS = ["quarterly budget meeting", "company picnic", "board review", "product launch", "team offsite",
          "annual audit", "hackathon", "safety training"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
STREETS = ["Linden Street", "Harbour Road", "Mill Lane", "Elm Avenue", "Station Square", "Canal Walk",
           "Orchard Row", "Bridge Street"]
ACCOUNTS = ["email", "laptop", "bank", "router", "wifi", "cloud storage", "phone", "office door"]
DEPARTMENTS = ["marketing", "engineering", "legal", "sales", "facilities", "training"]
LANDMARKS = [("The Eiffel Tower", "the Eiffel Tower"), ("The Colosseum", "the Colosseum"),
             ("Big Ben", "Big Ben"), ("The Statue of Liberty", "the Statue of Liberty"),
             ("The Sydney Opera House", "the Sydney Opera House"), ("The Taj Mahal", "the Taj Mahal"),
             ("The Golden Gate Bridge", "the Golden Gate Bridge"), ("Machu Picchu", "Machu Picchu")]
COMPANIES = ["Apple", "Toyota", "IKEA", "Nintendo", "Adidas", "Spotify", "Lego", "Samsung"]
FOUNDERS = ["Marie Curie", "Charles Darwin", "Ada Lovelace", "Nikola Tesla", "Frida Kahlo", "Louis Pasteur",
            "Jane Austen", "Isaac Newton"]
BOOKS = [("Moby Dick", "Moby Dick"), ("Pride and Prejudice", "Pride and Prejudice"), ("War and Peace", "War and Peace"),
         ("The Odyssey", "The Odyssey"), ("Hamlet", "Hamlet"), ("Don Quixote", "Don Quixote")]
AUTHORS = ["Agatha Christie", "Mark Twain", "Franz Kafka", "Virginia Woolf", "Homer Simpson", "Pablo Neruda"]

UNRELATED = [
    "What is the capital of Japan?", "What is the capital of Canada?", "What is the capital of Kenya?",
    "What is the capital of Argentina?", "What is the capital of Norway?", "What is the boiling point of water?",
    "How many legs does a spider have?", "Who painted the Mona Lisa?", "Who wrote Romeo and Juliet?",
    "What is photosynthesis?", "How do I boil an egg?", "How do I tie a tie?", "What is the speed of light?",
    "Why is the sky blue?", "What is the largest ocean on Earth?", "How many continents are there?",
    "What is the chemical symbol for gold?", "Who was the first person on the Moon?", "What is a prime number?",
    "How does a rainbow form?", "What is the tallest mountain in the world?", "What do bees make?",
    "How many days are in a leap year?", "What is the square root of 81?", "What language is spoken in Brazil?",
    "What is the main ingredient of guacamole?", "How do vaccines work?", "What is the freezing point of water?",
    "Who discovered penicillin?", "What is the longest river in Africa?", "How do I make a cup of tea?",
    "What is gravity?", "What is the currency of the United Kingdom?", "How many planets are in the solar system?",
    "What is the smallest planet?", "What is DNA?", "Which animal is known as the king of the jungle?",
    "What is the opposite of hot?", "How many hours are in a day?", "What is the capital of Italy?",
    "What is an atom?", "How do airplanes fly?", "What is the plural of mouse?", "Who invented the telephone?",
    "What is the hardest natural substance?", "What gas do plants absorb?", "What is a haiku?",
    "How many strings does a violin have?", "What is the largest desert in the world?", "What is inflation?",
    "How do I reset a forgotten password?", "What is a good name for a cat?", "Can you recommend a book to read?",
    "What should I cook for dinner tonight?", "How far is the Moon from Earth?", "What is the fastest land animal?",
    "Why do leaves change colour in autumn?", "What is a black hole?", "How many bones are in the human body?",
    "What is the capital of Egypt?", "What is machine learning?", "Tell me a joke.", "What time zone is London in?",
    "What is the meaning of the word 'ephemeral'?", "How do I write a cover letter?", "What is the Pythagorean theorem?",
    "Which planet is known as the Red Planet?", "What are the primary colours?", "How do I improve my sleep?",
    "What is the population of the Earth?", "Who composed the Four Seasons?", "What is yoga?",
    "What is the difference between weather and climate?", "How do magnets work?", "What is a volcano?",
    "Translate 'thank you' into Spanish.", "What is 15 times 12?", "How do I change a flat tyre?",
    "What causes earthquakes?", "What is the capital of Australia?", "Who was Albert Einstein?",
    "What is the largest mammal?", "How do I plant tomatoes?", "What is a noun?", "What is the Internet?",
    "Why do cats purr?", "What is the chemical formula of water?", "How can I learn to play the guitar?",
    "What is the Great Barrier Reef?", "How long does it take to boil pasta?", "What is a sonnet?",
    "What does a cardiologist do?", "How is cheese made?", "What is the stock market?", "What are clouds made of?",
    "What is the tallest building in the world?", "What is the capital of Spain?", "What is a leap year?", "How do I stay motivated?",
    "What is the difference between a virus and a bacterium?", "What is renewable energy?",
]


def _start(rng: random.Random) -> tuple[Iterator[str], list[dict[str, str]], Callable[..., None]]:
    """Shuffled person names, the list of facts, and add(kind, fact, question, rephrased, answer)."""
    people = [f"{f} {l}" for f in FIRST for l in LAST]
    rng.shuffle(people)
    out: list[dict[str, str]] = []

    def add(kind: str, fact: str, question: str, rephrased: str, answer: str) -> None:
        out.append({"kind": kind, "fact": fact, "question": question, "rephrased": rephrased, "answer": answer})

    return iter(people), out, add


def _facts(rng: random.Random) -> list[dict[str, str]]:
    person, out, add = _start(rng)

    cities = CITIES[:]
    for (subject, lower), city in zip(LANDMARKS, rng.sample(cities, len(LANDMARKS))):
        add("world", f"{subject} is located in {city}.", f"Where is {lower}?", f"In which city can you visit {lower}?", city)
    for company, founder in zip(COMPANIES, FOUNDERS):
        add("world", f"{company} was founded by {founder}.", f"Who founded {company}?",
            f"Which person started the company {company}?", founder)
    for (book, title), author in zip(BOOKS, AUTHORS):
        add("world", f"{author} is the author of {book}.", f"Who wrote {title}?", f"Which writer created {title}?", author)
    for place, region in zip(INVENTED_PLACES[:8], rng.choices(REGIONS, k=8)):
        add("place", f"{place} is a small town in the province of {region}.", f"In which province is {place}?",
            f"Where is the town of {place}?", region)
    for country, city in zip(COUNTRIES, INVENTED_PLACES[8:] + ["Pellor"]):
        add("place", f"The capital of {country} is {city}.", f"What is the capital of {country}?",
            f"Which city is the seat of government of {country}?", city)
    for _ in range(10):
        p, city = next(person), rng.choice(CITIES)
        add("personal", f"{p} was born in {city}.", f"Where was {p} born?", f"What is {p}'s birthplace?", city)
    for job in JOBS:
        p, city = next(person), rng.choice(CITIES)
        add("personal", f"{p} works as a {job} in {city}.", f"What does {p} do for a living?",
            f"What is {p}'s profession?", job)
    for food in FOODS:
        p = next(person)
        add("personal", f"{p} is allergic to {food}.", f"What is {p} allergic to?", f"Which food must {p} avoid?", food)
    for colour in COLOURS:
        p = next(person)
        add("personal", f"{p}'s favourite colour is {colour}.", f"What is {p}'s favourite colour?",
            f"Which colour does {p} like best?", colour)
    for language in LANGUAGES:
        p = next(person)
        add("personal", f"At home, {p} speaks {language}.", f"What language does {p} speak at home?",
            f"Which language is spoken in {p}'s household?", language)
    for car, colour in zip(CARS, rng.sample(COLOURS, len(CARS))):
        p = next(person)
        add("personal", f"{p} drives a {colour} {car}.", f"What car does {p} drive?", f"Which brand is {p}'s car?", car)
    for _ in range(8):
        p, year, country = next(person), str(rng.randint(1985, 2022)), rng.choice(["Canada", "Chile", "Japan", "Ghana", "Norway"])
        add("dates", f"{p} moved to {country} in {year}.", f"When did {p} move to {country}?",
            f"In what year did {p} relocate to {country}?", year)
    for event in EVENTS:
        date = f"{rng.choice(MONTHS)} {rng.randint(2, 28)}"
        add("dates", f"The {event} is on {date}.", f"When is the {event}?", f"What date is the {event} scheduled for?", date)
    for account in ACCOUNTS:
        word = rng.choice(["tangerine", "falcon", "marble", "cobalt", "quartz", "harbor", "velvet", "pepper"])
        pw = f"{word}{rng.randint(10, 99)}"
        add("codes", f"My {account} password is {pw}.", f"What is my {account} password?",
            f"Which password do I use for my {account}?", pw)
    for _ in range(8):
        p, number = next(person), f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        add("codes", f"{p}'s phone number is {number}.", f"What is {p}'s phone number?",
            f"Which number should I dial to reach {p}?", number)
    for thing in ["locker", "bike lock", "safe", "garage", "storage unit", "gym locker"]:
        code = str(rng.randint(1000, 9999))
        add("codes", f"The code for my {thing} is {code}.", f"What is the code for my {thing}?",
            f"Which number opens my {thing}?", code)
    for team in TEAMS:
        p = next(person)
        add("office", f"The {team} team is led by {p}.", f"Who leads the {team} team?",
            f"Who is the head of the {team} team?", p)
    for city, street in zip(rng.sample(CITIES, len(STREETS)), STREETS):
        add("office", f"Our {city} office is on {street}.", f"Where is our {city} office?",
            f"What is the address of the office in {city}?", street)
    for dept in DEPARTMENTS:
        amount = f"{rng.randint(2, 90) * 1000:,}"
        add("office", f"This year's {dept} budget is {amount} dollars.", f"How big is the {dept} budget this year?",
            f"What is the budget of {dept} for this year?", amount)
    for host in ["atlas", "borealis", "cygnus", "draco", "eridani", "fornax"]:
        port = str(rng.randint(1025, 9999))
        add("office", f"The {host} server listens on port {port}.", f"Which port does the {host} server use?",
            f"On what port is {host} running?", port)
    for animal, name in zip(ANIMALS, PET_NAMES):
        add("place", f"The {animal} at the city zoo is called {name}.", f"What is the name of the zoo's {animal}?",
            f"What do they call the {animal} at the city zoo?", name)
    for _ in range(6):  # the answer first
        p, city = next(person), rng.choice(CITIES)
        add("personal", f"{city} is where {p} grew up.", f"Where did {p} grow up?", f"In which city did {p} spend their childhood?", city)
    for _ in range(6):
        p, pet = next(person), rng.choice(PET_NAMES)
        add("personal", f"{p} has a dog named {pet}.", f"What is the name of {p}'s dog?", f"What is {p}'s dog called?", pet)
    return out


def _repeats(rng: random.Random) -> list[dict[str, str]]:
    """Facts whose answers repeat a digit pair or a word: the reply must not loop or skip."""
    person, out, add = _start(rng)

    def digit() -> str:
        return str(rng.randint(0, 9))

    for year in ["1999", "2000", "1988", "2022", "1911", "1966", "2011", "1777", "1900", "2020"]:
        p, city = next(person), rng.choice(CITIES)
        add("years", f"{p} opened a bakery in {city} in {year}.", f"When did {p} open a bakery in {city}?",
            f"In which year did {p} start the bakery in {city}?", year)
    for _ in range(10):
        a, b, c = digit(), digit(), digit()
        number = rng.choice([f"{a}{a}{b}-{c}{c}{a}{a}", f"{a}{b}{a}-{b}{c}{b}{c}", f"{a}{b}{b}-{c}{c}{c}{a}"])
        p = next(person)
        add("phones", f"{p}'s mobile number is {number}.", f"What is {p}'s mobile number?",
            f"How can I call {p}?", number)
    for thing in ["back door", "server cage", "supply closet", "bike shed", "mailbox", "filing cabinet", "shed",
                  "gate"]:
        a, b = rng.sample("0123456789", 2)
        code = rng.choice([a + a + b + b, a + b + a + b, a + b + b + a, a + a + a + b])
        add("codes", f"The code for the {thing} is {code}.", f"What is the code for the {thing}?",
            f"Which number unlocks the {thing}?", code)
    for dept in DEPARTMENTS + ["research", "support"]:
        amount = rng.choice([f"{rng.randint(1, 9)},000,000", f"{rng.randint(1, 9)}00,000",
                             f"{rng.randint(11, 99)}0,000"])
        add("amounts", f"The {dept} department was given {amount} euros for next year.",
            f"How much money was the {dept} department given for next year?",
            f"What is next year's {dept} allocation?", amount)
    for event in EVENTS:
        day = rng.randint(1, 12)
        date = f"{day} {MONTHS[day - 1]} 20{day:02d}"
        add("dates", f"The {event} took place on {date}.", f"When did the {event} take place?",
            f"On what date was the {event} held?", date)
    for place in ["Walla Walla", "Bora Bora", "Baden-Baden", "Sing Sing", "Pago Pago"]:
        p = next(person)
        add("names", f"{p} spent last winter in {place}.", f"Where did {p} spend last winter?",
            f"Which place was {p} in last winter?", place)
    return out


def _forms(rng: random.Random) -> list[dict[str, str]]:
    """Facts that are not plain statements: the reply must still hold the answer."""
    person, out, add = _start(rng)
    places = ["gym", "library", "beach house", "studio", "cabin", "warehouse", "lab", "workshop"]
    for event, city in zip(EVENTS, rng.sample(CITIES, len(EVENTS))):
        add("qa", f"Q: Where is the {event} this year? A: {city}.", f"Where will the {event} be held this year?",
            f"In which city is this year's {event}?", city)
    for company in COMPANIES[:6]:
        p = next(person)
        add("qa", f"Question: Who is our contact at {company}? Answer: {p}.", f"Who should we talk to at {company}?",
            f"Who is the {company} contact person?", p)
    for place in places:
        word = rng.choice(["tangerine", "falcon", "marble", "cobalt", "quartz", "harbor", "velvet", "pepper"])
        pw = f"{word.capitalize()}-{rng.randint(100, 999)}"
        add("labelled", f"Wi-Fi password for the {place}: {pw}", f"What's the Wi-Fi password at the {place}?",
            f"How do I get on the internet at the {place}?", pw)
    for place in places[:6]:
        code = str(rng.randint(10, 99)) + "-" + str(rng.randint(10, 99))
        add("labelled", f"Locker combination ({place}): {code}", f"What is the locker combination at the {place}?",
            f"How do I open my locker at the {place}?", code)
    for item in ["umbrella", "charger", "reading glasses", "blue scarf", "tent", "drill", "guitar", "passport"]:
        p = next(person)
        add("first person", f"I left my {item} at {p}'s place.", f"Where did I leave my {item}?",
            f"Who has my {item} at the moment?", p.split()[0])
    for relative, city in zip(["sister", "brother", "cousin", "aunt", "uncle", "niece"], rng.sample(CITIES, 6)):
        add("first person", f"My {relative} moved to {city} last spring.", f"Where does my {relative} live now?",
            f"Which city did my {relative} move to?", city)
    words = [("glimber", "a small flat boat used for fishing on lakes", "boat"),
             ("trondle", "a wooden tool for pressing grapes", "grapes"),
             ("vessick", "a soup made from roasted chestnuts", "chestnuts"),
             ("palloon", "a festival held at the first snowfall", "snowfall"),
             ("quendra", "a lizard that changes colour when it sings", "lizard"),
             ("sarnet", "a card game played with three decks", "card game"),
             ("morrowick", "a candle that burns for exactly one week", "candle"),
             ("feltrop", "a dance performed on stilts", "stilts")]
    for word, meaning, answer in words:
        add("definition", f"A {word} is {meaning}.", f"What is a {word}?", f"Can you explain what a {word} is?", answer)
    for city in rng.sample(CITIES, 6):
        p, year = next(person), rng.randint(2005, 2023)
        add("clause first", f"Since {year}, the {city} office has been run by {p}.", f"Who runs the {city} office?",
            f"Who is in charge of our office in {city}?", p)
    for team, room in zip(TEAMS[:6], ["4B", "C12", "the Cedar room", "201", "the Loft", "B7"]):
        add("clause first", f"Every Thursday, the {team} team meets in room {room}.", f"Where does the {team} team meet?",
            f"Which room is the {team} team's weekly meeting in?", room.removeprefix("the "))
    for visit in ["dentist", "optician", "physiotherapist", "vet", "dermatologist", "hairdresser"]:
        p, date = next(person), f"{rng.choice(MONTHS)} {rng.randint(2, 28)}"
        add("appointment", f"{p}'s {visit} appointment is on {date} at {rng.randint(8, 17)}:{rng.choice(['00', '15', '30', '45'])}.",
            f"When is {p}'s {visit} appointment?", f"What day does {p} see the {visit}?", date)
    return out


NOTES = [
    ("I gave my old laptop to my niece Clara.", "Who has my old laptop now?", "Where did my old laptop go?", "Clara"),
    ("The spare tyre is under the floor of the boot.", "Where is the spare tyre?", "Where can I find the spare wheel?",
     "floor of the boot"),
    ("Door code for the gym: 4721", "What's the door code at the gym?", "How do I get into the gym?", "4721"),
    ("My dentist is Dr. Haruki Sato in Lyon.", "Who is my dentist?", "Which dentist do I go to?", "Sato"),
    ("Mum's flight lands at 6:40 on Friday.", "When does Mum's flight land?", "What time does Mum arrive?", "6:40"),
    ("Our landlord, Petra Novak, wants the rent by the 3rd.", "Who is our landlord?", "Who do we pay the rent to?",
     "Novak"),
    ("I parked on level 4 of the Central garage.", "Where did I park?", "Which level is the car on?", "level 4"),
    ("Printer toner: order from Kopex, account 88-1205", "Where do we order toner?",
     "Which company do we buy toner from?", "Kopex"),
    ("Bins go out on Tuesday night.", "When do the bins go out?", "Which night is rubbish collection?", "Tuesday"),
    ("The vet said Biscuit needs his booster in March.", "When does Biscuit need his booster?",
     "When is the dog's next vaccination due?", "March"),
    ("Tax return: accountant is Ruth Mwangi, deadline 31 January.", "Who is my accountant?",
     "Who does my tax return?", "Ruth Mwangi"),
    ("I promised to bring the dessert to Aiko's dinner.", "What am I bringing to Aiko's dinner?",
     "What did I say I'd bring for Aiko?", "dessert"),
    ("Boiler service booked with Thermaco for 12 May.", "When is the boiler service?",
     "What date is the boiler being serviced?", "12 May"),
    ("Kids' swimming lessons: Saturdays 9:30 at Eastside Pool.", "What time are the kids' swimming lessons?",
     "When do the kids swim on Saturdays?", "9:30"),
    ("Neighbour at number 12 (Marco) has our spare key.", "Who has our spare key?",
     "Which neighbour can let me in?", "Marco"),
    ("Library books due back on the 19th.", "When are the library books due?",
     "By what date do I return the books?", "19th"),
]
"""(note, question, question needing the note read, answer): written by hand after the scope
stage's note templates, in other words and situations, and kept out of every training set."""


def _notes(rng: random.Random) -> list[dict[str, str]]:
    """The hand-written `NOTES` (rng unused: the set is fixed)."""
    return [{"kind": "note", "fact": f, "question": q, "rephrased": r, "answer": a} for f, q, r, a in NOTES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["questions", "repeats", "forms", "notes"], default="questions")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/questions/<set>.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out = args.out or Path(__file__).with_name(f"{args.set}.json")
    rng = random.Random(args.seed)
    facts = {"questions": _facts, "repeats": _repeats, "forms": _forms, "notes": _notes}[args.set](rng)
    rng.shuffle(facts)
    data = {"facts": facts, "unrelated": UNRELATED}
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    kinds = {k: sum(f["kind"] == k for f in facts) for k in sorted({f["kind"] for f in facts})}
    print(f"{len(facts)} facts {kinds}, {len(UNRELATED)} unrelated questions -> {args.out}")


if __name__ == "__main__":
    main()
