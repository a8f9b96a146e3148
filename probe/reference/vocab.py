"""Word lists of the reference corpus: names, places, objects, facts, sentiment and topics.

Every word here that a task asks the model to produce must become one token (with its
leading space) in the trained tokenizer; ``probe.reference.tokenizer`` checks that.
"""

NAMES = (
    "Mary John Alice Bob James Emma Olivia Liam Noah Ava Sophia Mason Lucas Mia Ethan Amelia "
    "Harper Logan Henry Ella Jack Grace Leo Chloe Owen Lily Ryan Zoe Adam Anna Paul Sarah "
    "Mark Laura David Kate Peter Rose Daniel Clara Samuel Alex Victor Nora Oscar Ruby Simon "
    "Hannah Thomas Julia Oliver Lucy George Ellie Max Sofia Isaac Hazel Felix Iris Jacob Eva "
    "Aaron Jane Martin Diana Frank Helen Eric Amy Kevin Sara Tom Beth Carl Maria Nathan Lisa "
    "Ian Fiona Hugo Tina Ben Molly Sean Wendy Luke Paula Dean Ruth Ivan Gina Kyle Vera Neil "
    "Dora Ralph Edith Gary Irene Louis Megan Roger Nina Steve Olga Tony Pam Walter Rita Colin "
    "Sally Brian Jill Dennis Holly Jason Joan Keith Kim Lewis Linda Derek Tara Glen Fay"
).split()

PLACES = (
    "store park school market beach garden library station office restaurant museum "
    "hospital cinema church theatre bakery farm river lake forest"
).split()

OBJECTS = (
    "drink book ring letter gift ball key cake flower pen bag hat coin map cup apple "
    "card lamp shirt toy"
).split()

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Hungary": "Budapest",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Belgium": "Brussels",
    "Thailand": "Bangkok",
    "India": "Delhi",
    "Mexico": "Mexico",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Australia": "Canberra",
}

SOUNDS = {
    "cow": "moo",
    "dog": "bark",
    "cat": "meow",
    "duck": "quack",
    "sheep": "baa",
    "lion": "roar",
    "owl": "hoot",
    "horse": "neigh",
    "pig": "oink",
    "snake": "hiss",
    "frog": "croak",
    "bee": "buzz",
    "wolf": "howl",
    "mouse": "squeak",
    "crow": "caw",
}

COLORS = {
    "grass": "green",
    "sky": "blue",
    "snow": "white",
    "coal": "black",
    "blood": "red",
    "banana": "yellow",
    "orange": "orange",
    "chocolate": "brown",
    "lavender": "purple",
    "flamingo": "pink",
}

POSITIVE = (
    "wonderful great lovely excellent amazing delightful fantastic brilliant superb "
    "beautiful pleasant charming perfect joyful"
).split()
NEGATIVE = (
    "terrible awful horrible dreadful bad poor boring ugly nasty miserable disappointing "
    "unpleasant disgusting sad"
).split()
REVIEW_NOUNS = "film meal trip hotel book concert show game party day visit story".split()

TOPICS = {
    "sport": (
        "football team match goal player coach stadium score league tennis referee race "
        "athlete trophy"
    ).split(),
    "cooking": (
        "recipe oven soup flour kitchen chef bread sauce dinner butter salad pan spice dough"
    ).split(),
    "weather": (
        "rain snow storm wind cloud sunshine forecast thunder fog temperature frost breeze "
        "drizzle heat"
    ).split(),
    "music": (
        "song guitar piano melody concert band singer drum album rhythm violin choir chord tune"
    ).split(),
}

FILLER = (
    "the a one old new small big red blue green happy quiet bright dark warm cold fast slow "
    "river tree house road window door chair table stone cloud light water fire paper glass "
    "street city village bridge hill field garden morning evening night summer winter"
).split()
