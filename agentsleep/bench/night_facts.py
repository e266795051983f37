"""The `bench nights` fact set: 20 nights of 8 everyday facts told in the first person, and updates.

Written for that suite alone and never used to tune anything (the recipe was tuned on bench/facts.py
and bench/phrasings.py, whose names and topics this set avoids). Each fact is something a user
tells an assistant about their own life; its question is paraphrased (not the fact's wording) and
`answer` is the short value a correct closed-book reply contains. An update is a later first-person
statement that changes an earlier fact's value: the fact's own question must then get `answer`.
"""
from __future__ import annotations

from typing import NamedTuple


class NightFact(NamedTuple):
    text: str
    question: str
    answer: str


class Update(NamedTuple):
    night: int   # 0-based night of the fact it changes
    index: int   # that fact's place in its night
    text: str    # the new statement, in the first person
    answer: str  # the new value


F = NightFact

NIGHTS: list[list[NightFact]] = [
    [  # 1
        F("I drive a red Mazda hatchback.", "What car do I have?", "Mazda"),
        F("My grandmother is called Rosalind.", "What is my grandma's name?", "Rosalind"),
        F("I take the number 42 bus to work.", "Which bus do I ride to the office?", "42"),
        F("Our neighbour's parrot is called Captain.", "What is the name of the parrot next door?", "Captain"),
        F("I bake sourdough bread every Sunday.", "What kind of bread do I make at the weekend?", "sourdough"),
        F("My favourite board game is Carcassonne.", "Which board game do I enjoy most?", "Carcassonne"),
        F("I keep my spare key under the blue flowerpot.", "Where is my spare key hidden?", "flowerpot"),
        F("My yoga class is on Wednesday evenings.", "On what day do I go to yoga?", "Wednesday"),
    ],
    [  # 2
        F("My nephew Anselm turns seven in August.", "In which month is my nephew's birthday?", "August"),
        F("I bank with a credit union called Harbourline.", "What is the name of my bank?", "Harbourline"),
        F("My favourite colour is teal.", "Which colour do I like best?", "teal"),
        F("I water the ferns on Fridays.", "When do my ferns get watered?", "Friday"),
        F("Our apartment is on the ninth floor.", "Which floor do we live on?", "ninth"),
        F("I learned to swim at Lake Tahoma.", "Where did I learn how to swim?", "Tahoma"),
        F("My go-to pizza topping is artichoke.", "What do I usually put on my pizza?", "artichoke"),
        F("I play badminton with my colleague Dmitri.", "Who is my badminton partner?", "Dmitri"),
    ],
    [  # 3
        F("My hairdresser is named Colette.", "Who cuts my hair?", "Colette"),
        F("I drink oat milk in my coffee.", "What sort of milk goes in my coffee?", "oat"),
        F("Our book club meets at the Willow Street library.", "Where does our reading group gather?", "Willow"),
        F("My phone is a Pixel with a green case.", "What colour is my phone case?", "green"),
        F("I am saving up for a trip to Patagonia.", "Which place am I putting money aside to visit?", "Patagonia"),
        F("My uncle Ferdinand keeps bees.", "Which of my relatives is a beekeeper?", "Ferdinand"),
        F("I was a lifeguard during college.", "What summer job did I have as a student?", "lifeguard"),
        F("Our family doctor's practice is on Elm Road.", "On which road is our doctor's surgery?", "Elm"),
    ],
    [  # 4
        F("My favourite season is autumn.", "Which time of year do I love most?", "autumn"),
        F("I have a tortoise named Sheldon.", "What is my tortoise called?", "Sheldon"),
        F("I commute by ferry across the bay.", "How do I travel to work?", "ferry"),
        F("My mother grew up in Tromsø.", "Where was my mum raised?", "Tromsø"),
        F("I usually wake up at 5:45.", "What time does my alarm go off?", "5:45"),
        F("Our wedding anniversary dinner is always at Casa Lupita.", "Where do we celebrate our anniversary?", "Lupita"),
        F("I collect vintage postcards.", "What is my collecting hobby?", "postcards"),
        F("My best friend from school is Oyelaran.", "Who was my closest school friend?", "Oyelaran"),
    ],
    [  # 5
        F("I wear size 43 shoes.", "What is my shoe size?", "43"),
        F("My landlord is Mr. Abernathy.", "Who owns the flat I rent?", "Abernathy"),
        F("I volunteer at the animal shelter on Saturdays.", "Where do I volunteer at the weekend?", "shelter"),
        F("Our cat flap was fitted by a carpenter named Ilse.", "Who installed our cat flap?", "Ilse"),
        F("My favourite podcast is about medieval history.", "What is my favourite podcast's topic?", "medieval"),
        F("I am learning the accordion.", "Which instrument am I learning?", "accordion"),
        F("My daughter's school is Brookfield Primary.", "Which school does my daughter attend?", "Brookfield"),
        F("I get my groceries from the Thursday market.", "Where do I buy my food each week?", "market"),
    ],
    [  # 6
        F("My first car was a Volvo estate.", "What was the first car I owned?", "Volvo"),
        F("I keep tomatoes on our balcony.", "What do I grow on the balcony?", "tomatoes"),
        F("My favourite painter is Hopper.", "Which artist do I admire most?", "Hopper"),
        F("Our internet provider is Skylark Broadband.", "Who supplies our internet?", "Skylark"),
        F("I run the parkrun at Fernhill Park.", "Where do I do my weekly run?", "Fernhill"),
        F("My sister-in-law is a marine biologist.", "What does my sister-in-law do for a living?", "marine biologist"),
        F("I am allergic to penicillin.", "Which medicine am I allergic to?", "penicillin"),
        F("My locker at the pool is number 118.", "Which locker do I use at the swimming pool?", "118"),
    ],
    [  # 7
        F("I studied geology at university.", "What was my degree subject?", "geology"),
        F("My favourite soup is French onion.", "Which soup do I like best?", "onion"),
        F("Our dog walker is called Thibault.", "Who walks our dog?", "Thibault"),
        F("I do the crossword every morning with breakfast.", "What puzzle do I solve at breakfast?", "crossword"),
        F("My cousin Marisol lives in Valparaíso.", "Which city is my cousin Marisol in?", "Valparaíso"),
        F("I use a standing desk made of walnut.", "What wood is my desk made of?", "walnut"),
        F("My passport expires in November.", "When does my passport run out?", "November"),
        F("I sing tenor in a choir.", "What voice part do I sing?", "tenor"),
    ],
    [  # 8
        F("My favourite film is Spirited Away.", "Which movie do I love most?", "Spirited Away"),
        F("I take vitamin D in winter.", "Which supplement do I take in the cold months?", "vitamin D"),
        F("Our plumber is a man named Gruber.", "Who fixes our pipes?", "Gruber"),
        F("I keep chickens called the Marigolds.", "What do I call my hens?", "Marigolds"),
        F("My running shoes are a pair of Brooks.", "What brand are my running shoes?", "Brooks"),
        F("I was born on a Tuesday.", "On which weekday was I born?", "Tuesday"),
        F("My favourite fruit is persimmon.", "Which fruit do I like most?", "persimmon"),
        F("I have a tattoo of a heron on my shoulder.", "What bird is tattooed on me?", "heron"),
    ],
    [  # 9
        F("My father-in-law is called Leopold.", "What is my wife's father's name?", "Leopold"),
        F("I go climbing at a gym called Crux.", "Where do I go bouldering?", "Crux"),
        F("Our sofa is dark green velvet.", "What colour is our couch?", "green"),
        F("I learned to knit from my aunt Philippa.", "Who taught me knitting?", "Philippa"),
        F("My laptop is a ThinkPad.", "What kind of laptop do I use?", "ThinkPad"),
        F("I write my journal in fountain pen.", "What do I write my diary with?", "fountain pen"),
        F("My favourite beach is Porthcurno.", "Which beach do I like best?", "Porthcurno"),
        F("I drink chamomile before bed.", "What do I drink at bedtime?", "chamomile"),
    ],
    [  # 10
        F("My son plays goalkeeper on his football team.", "What position does my son play?", "goalkeeper"),
        F("I rent a garden allotment at Marsh Lane.", "Where is my allotment?", "Marsh Lane"),
        F("Our car insurance is with Bellwether.", "Which company insures our car?", "Bellwether"),
        F("My favourite poet is Szymborska.", "Which poet do I read most?", "Szymborska"),
        F("I mend bicycles as a side job.", "What do I repair for extra money?", "bicycles"),
        F("My reading glasses are plus two.", "What strength are my reading glasses?", "two"),
        F("I meet my old flatmate Wendeline every spring.", "Which former flatmate do I see each spring?", "Wendeline"),
        F("Our fridge is a Liebherr.", "What brand is our fridge?", "Liebherr"),
    ],
    [  # 11
        F("I play the banjo in a bluegrass group.", "Which instrument do I play in my band?", "banjo"),
        F("My stepfather is named Casimir.", "Who is my stepdad?", "Casimir"),
        F("I buy my coffee beans from Ember Roasters.", "Where do I get coffee beans?", "Ember"),
        F("Our holiday cottage is in Connemara.", "Where is our holiday house?", "Connemara"),
        F("My favourite number is 17.", "Which number is my lucky one?", "17"),
        F("I do pottery at the community centre.", "What craft do I practise at the community centre?", "pottery"),
        F("My electric bike is called Bolt.", "What have I named my e-bike?", "Bolt"),
        F("I fear spiders more than anything.", "What am I most scared of?", "spiders"),
    ],
    [  # 12
        F("My niece Saoirse studies medicine.", "What is my niece studying?", "medicine"),
        F("I used to live above a bakery.", "What shop was below my old flat?", "bakery"),
        F("Our smoke alarm battery was changed in January.", "When did we last replace the smoke alarm battery?", "January"),
        F("My favourite cheese is Comté.", "Which cheese do I like most?", "Comté"),
        F("I play five-a-side football on Tuesday nights.", "When do I play football?", "Tuesday"),
        F("My therapist is Dr. Lindqvist.", "Who is my counsellor?", "Lindqvist"),
        F("I keep a sourdough starter called Gloop.", "What is my starter's name?", "Gloop"),
        F("My train to the city leaves at 7:12.", "When does my morning train depart?", "7:12"),
    ],
    [  # 13
        F("I learned Italian from my nonna.", "Which language did my grandmother teach me?", "Italian"),
        F("Our kitchen tiles are terracotta.", "What are our kitchen tiles made of?", "terracotta"),
        F("My godson is named Ezekiel.", "What is my godchild called?", "Ezekiel"),
        F("I have a season ticket for the Rovers.", "Which team do I hold a season ticket for?", "Rovers"),
        F("My favourite spice is cardamom.", "Which spice do I cook with most happily?", "cardamom"),
        F("I write software for a logistics firm.", "What kind of company do I write code for?", "logistics"),
        F("My dream car is a Citroën DS.", "Which car would I love to own?", "Citroën"),
        F("I donate blood every twelve weeks.", "How often do I give blood?", "twelve weeks"),
    ],
    [  # 14
        F("I sleep on the left side of the bed.", "Which side of the bed is mine?", "left"),
        F("My accountant is called Marguerite.", "Who does my accounts?", "Marguerite"),
        F("Our street has a cherry tree outside number 9.", "What tree stands outside number 9?", "cherry"),
        F("I practise calligraphy with a brush.", "What art do I practise with a brush?", "calligraphy"),
        F("My favourite museum is the Rijksmuseum.", "Which museum do I like best?", "Rijksmuseum"),
        F("I got my driving licence at nineteen.", "How old was I when I passed my driving test?", "nineteen"),
        F("My grandfather was a lighthouse keeper.", "What was my grandad's job?", "lighthouse keeper"),
        F("I cycle along the canal towpath to work.", "Which route do I take by bike to work?", "canal"),
    ],
    [  # 15
        F("I am training for a half marathon in Ghent.", "Where is the half marathon I am training for?", "Ghent"),
        F("My favourite biscuit is the ginger nut.", "Which biscuit do I like best?", "ginger"),
        F("Our cleaner comes on Monday mornings.", "When does our cleaner come?", "Monday"),
        F("My piano teacher is Mrs. Okonkwo.", "Who teaches me piano?", "Okonkwo"),
        F("I keep my passwords in a notebook with a red cover.", "What colour is my password notebook?", "red"),
        F("My brother-in-law is a firefighter.", "What does my brother-in-law do?", "firefighter"),
        F("I travel with a green rucksack.", "What colour is my travel backpack?", "green"),
        F("My favourite sandwich is egg and cress.", "Which sandwich do I order most?", "egg"),
    ],
    [  # 16
        F("I play chess online as NightOwl.", "What is my online chess name?", "NightOwl"),
        F("My godmother lives in Aberdeen.", "Where does my godmother live?", "Aberdeen"),
        F("Our boiler was installed by Hearthwise.", "Which firm installed our boiler?", "Hearthwise"),
        F("I have a scar on my left knee from a skateboard.", "What gave me the scar on my knee?", "skateboard"),
        F("My favourite mug has a fox on it.", "What animal is on my favourite mug?", "fox"),
        F("I am reading a biography of Shackleton.", "Whose biography am I reading?", "Shackleton"),
        F("My weekly budget for groceries is 90 euros.", "How much do I spend on food shopping each week?", "90"),
        F("I grew up on a farm with goats.", "What animals did we keep when I was a child?", "goats"),
    ],
    [  # 17
        F("I am learning to sail a dinghy.", "What kind of boat am I learning to sail?", "dinghy"),
        F("My optician is on Crescent Avenue.", "On which street is my optician?", "Crescent"),
        F("Our daughter's violin teacher is Augustin.", "Who teaches our daughter violin?", "Augustin"),
        F("My favourite ice cream is pistachio.", "Which ice cream flavour do I pick?", "pistachio"),
        F("I keep a bonsai juniper on my desk.", "What plant sits on my desk?", "juniper"),
        F("My wife works as a translator.", "What is my wife's job?", "translator"),
        F("I meditate for twenty minutes at lunch.", "How long do I meditate at midday?", "twenty minutes"),
        F("I pay my rent on the 3rd of each month.", "On what day of the month is my rent due?", "3rd"),
    ],
    [  # 18
        F("I bought my guitar in Seville.", "Where did I buy my guitar?", "Seville"),
        F("My favourite breakfast is shakshuka.", "What do I like to eat for breakfast?", "shakshuka"),
        F("Our vet is at the Birchwood clinic.", "Which clinic is our vet at?", "Birchwood"),
        F("My childhood nickname was Pip.", "What did people call me as a child?", "Pip"),
        F("I go fishing for trout with my father.", "What fish do I catch with my dad?", "trout"),
        F("My manager's name is Rasmussen.", "Who is my boss?", "Rasmussen"),
        F("I have two kayaks in the garage.", "How many kayaks do I own?", "two"),
        F("My email newsletter is about urban birds.", "What does my newsletter cover?", "birds"),
    ],
    [  # 19
        F("I was married in a barn in Vermont.", "Where did my wedding take place?", "Vermont"),
        F("My favourite tree is the silver birch.", "Which tree do I like most?", "birch"),
        F("Our router password starts with Quokka.", "What word begins our wifi password?", "Quokka"),
        F("I speak a little Swahili.", "Which African language do I know some of?", "Swahili"),
        F("My physiotherapist is called Benedikt.", "Who is my physio?", "Benedikt"),
        F("I take my holidays every September.", "In which month do I go on holiday?", "September"),
        F("My wristwatch was a gift from my uncle.", "Who gave me my watch?", "uncle"),
        F("I make jam from the blackberries behind our house.", "What fruit do I turn into jam?", "blackberries"),
    ],
    [  # 20
        F("My favourite constellation is Cassiopeia.", "Which constellation do I like best?", "Cassiopeia"),
        F("I work from home on Thursdays.", "Which day do I work remotely?", "Thursday"),
        F("Our twins were born in Cork.", "Where were our twins born?", "Cork"),
        F("My bicycle lock code is 2719.", "What is the code for my bike lock?", "2719"),
        F("I play darts at the Anchor pub.", "Where do I play darts?", "Anchor"),
        F("My grandmother's recipe book is bound in leather.", "What is my grandmother's recipe book covered in?", "leather"),
        F("I have visited Iceland three times.", "How many times have I been to Iceland?", "three"),
        F("My lunch is usually a bowl of ramen.", "What do I normally have for lunch?", "ramen"),
    ],
]

# A later statement that changes an earlier fact (its question is unchanged), one or two for each of nights
# 1-19; the suite takes the oldest one whose fact was told in its run (index < facts per night).
U = Update
UPDATES: list[Update] = [
    U(0, 0, "I sold the Mazda; I drive a white Toyota now.", "Toyota"),
    U(0, 7, "My yoga class has moved to Monday evenings.", "Monday"),
    U(1, 2, "My favourite colour is mustard yellow these days.", "mustard"),
    U(1, 1, "I closed my Harbourline account and now bank with Northgate Savings.", "Northgate"),
    U(2, 0, "Colette retired, so my hairdresser is now Jasper.", "Jasper"),
    U(2, 1, "I gave up oat milk; I take almond milk in my coffee now.", "almond"),
    U(3, 0, "These days my favourite season is spring.", "spring"),
    U(3, 2, "I stopped taking the ferry; I commute by train now.", "train"),
    U(4, 1, "We moved flats, and my landlord is now Mrs. Pennington.", "Pennington"),
    U(4, 0, "My feet grew; I wear size 44 shoes now.", "44"),
    U(5, 3, "We switched our internet provider to Kestrelnet.", "Kestrelnet"),
    U(5, 2, "My favourite painter is now Vermeer.", "Vermeer"),
    U(6, 2, "Thibault moved away, so our dog walker is now Ottilie.", "Ottilie"),
    U(6, 1, "My favourite soup is now minestrone.", "minestrone"),
    U(7, 2, "We have a new plumber, a woman named Haverkamp.", "Haverkamp"),
    U(7, 4, "I switched my running shoes to a pair of Asics.", "Asics"),
    U(8, 1, "I left Crux and now go climbing at a gym called Overhang.", "Overhang"),
    U(8, 4, "I replaced my ThinkPad with a MacBook.", "MacBook"),
    U(9, 2, "We moved our car insurance to Larkspur.", "Larkspur"),
    U(9, 1, "I gave up Marsh Lane and rent an allotment at Quarry Hill now.", "Quarry Hill"),
    U(10, 2, "I buy my coffee beans from Driftwood Roasters now.", "Driftwood"),
    U(11, 5, "I changed therapists; my therapist is now Dr. Achterberg.", "Achterberg"),
    U(11, 4, "I moved my five-a-side football to Thursday nights.", "Thursday"),
    U(12, 3, "I gave up my Rovers ticket and hold a season ticket for the Albion now.", "Albion"),
    U(13, 1, "Marguerite retired; my accountant is now called Bartholomew.", "Bartholomew"),
    U(14, 2, "Our cleaner now comes on Wednesday mornings.", "Wednesday"),
    U(15, 1, "My godmother has moved from Aberdeen to Inverness.", "Inverness"),
    U(16, 1, "My optician has moved to Harbour Street.", "Harbour"),
    U(17, 2, "We changed vets; our vet is now at the Oakmere clinic.", "Oakmere"),
    U(18, 4, "Benedikt left, so my physiotherapist is now called Imogen.", "Imogen"),
]


# ---- the development variant (`bench nights --dev`): tune night-after-night behaviour here, never on the above ----
# bench/facts.py (the development set) told in the first person, 8 a night, and updates of its facts.
DEV_UPDATES: list[Update] = [
    U(0, 4, "I switched dentists; my dentist is Dr. Whitfield now.", "Whitfield"),
    U(1, 2, "I renamed my wifi network to CopperKite.", "CopperKite"),
    U(1, 7, "My brother Tomas has moved to Montreal.", "Montreal"),
    U(2, 3, "I cancelled Ironworks; my gym is Summit Climbing now.", "Summit"),
    U(3, 6, "My locker code was changed to 5820.", "5820"),
    U(4, 1, "These days my favourite band is Portishead.", "Portishead"),
]


def dev_nights(k: int = 8) -> list[list[NightFact]]:
    """bench/facts.py's sets in the first person ("The user's dentist is ..." -> "My dentist is ..."), K a night,
    without a fact whose question an earlier one already asks (two facts giving "What make is my car?"
    different answers would be an update that no schedule announced)."""
    from ..sleep.voice import from_the_user
    from .facts import SET_A, SET_B, SET_C

    facts, asked = [], set()
    for f in SET_A + SET_B + SET_C:
        if f.question not in asked:
            asked.add(f.question)
            facts.append(F(from_the_user(f.text), f.question, f.answer))
    return [facts[i:i + k] for i in range(0, len(facts) - k + 1, k)]


# A second development variant (`bench nights --dev --dev-set everyday`), written on 2026-12-06 before anything
# was tuned on it: everyday facts in the first person, the way a user mentions them (asides, "we", "our"), each
# asked with a question worded unlike the statement, like the test set above but with its own topics and
# names. bench/facts.py's sets ask nearly in their own words; this one shows whether a change helps a fact
# that must be recalled from a differently worded question. Development only: tune on it.
EVERYDAY_NIGHTS: list[list[NightFact]] = [
    [
        F("My best friend from school, Rafael, is getting married in June.",
          "What's the name of my closest friend from my school days?", "Rafael"),
        F("I take the number 14 tram to the office every day.", "Which tram line do I ride to work?", "14"),
        F("My blood type is O negative, in case it ever matters.", "What blood group am I?", "negative"),
        F("I've started doing pottery on Saturday mornings.", "What craft have I taken up at the weekend?", "pottery"),
        F("Our apartment is on the seventh floor, no lift.", "How high up is our flat?", "seventh"),
        F("I'm saving up for a trip to Kyoto in the autumn.", "Where am I hoping to travel later this year?", "Kyoto"),
        F("My plumber is a guy named Ferris, cheap and reliable.", "Who do I call when a pipe leaks?", "Ferris"),
        F("At the café I always get an oat flat white.", "What's my usual coffee order?", "flat white"),
    ],
    [
        F("My wife Ines works as a paramedic.", "What job does my wife have?", "paramedic"),
        F("I bank with Northgate Credit Union.", "Which bank holds my account?", "Northgate"),
        F("I wear a size 44 shoe, annoyingly hard to find.", "What size do I ask for when I buy new trainers?", "44"),
        F("We adopted a tortoise called Sheldon last spring.", "What's our tortoise's name?", "Sheldon"),
        F("I'm teaching myself the banjo from online videos.", "Which instrument am I learning on my own?", "banjo"),
        F("My eye doctor is Dr. Castellano at the clinic on Elm Street.", "Who checks my eyes?", "Castellano"),
        F("Our team's standup is at 9:15 every morning.", "What time does my team meet each morning?", "9:15"),
        F("This summer I grew tomatoes on the balcony.", "What vegetable did I grow at home this year?", "tomatoes"),
    ],
    [
        F("My car insurance is with Harbor Mutual.", "Who insures my car?", "Harbor"),
        F("I've been vegetarian since college.", "What diet do I follow?", "vegetarian"),
        F("My son Kenji plays goalkeeper for his under-12 team.", "What position does my boy play?", "goalkeeper"),
        F("At work I park in spot B27 of the garage.", "Where do I leave my car at the office?", "B27"),
        F("Our favourite restaurant in town is a little Georgian place called Tbilisi Nights.",
          "Where do we like to eat out most?", "Tbilisi"),
        F("I hate flying, so I take the train to see my parents in Lyon.", "In which city do my parents live?", "Lyon"),
        F("My phone plan is with Vireo Mobile.", "Which carrier is my phone on?", "Vireo"),
        F("I do yoga on Wednesday evenings with a neighbour.", "Which evening is my yoga?", "Wednesday"),
    ],
    [
        F("Our babysitter is a student named Priya.", "Who looks after the kids when we go out?", "Priya"),
        F("I'm reading a biography of Ada Lovelace at the moment.", "Whose life story am I reading?", "Lovelace"),
        F("As a kid everyone called me Pickle.", "What was my childhood nickname?", "Pickle"),
        F("I get my prescriptions from the Greenleaf pharmacy on the corner.",
          "Where do I pick up my medicine?", "Greenleaf"),
        F("My grandfather was a fisherman in Norway.", "What did my grandfather do for work?", "fisherman"),
        F("We're repainting the living room a dark teal.", "What colour is the living room going to be?", "teal"),
        F("I root for the Chicago Cubs, my dad took me to games as a kid.", "Which baseball team do I support?", "Cubs"),
        F("My work laptop is a ThinkPad X1.", "What kind of computer do I use for my job?", "ThinkPad"),
    ],
    [
        F("Next month I'm doing a charity bike ride from London to Brighton.",
          "In which town does my fundraising cycle end?", "Brighton"),
        F("My piano teacher, Mr. Osei, comes on Thursdays.", "Who gives me piano lessons?", "Osei"),
        F("My go-to karaoke song is Dancing Queen.", "What do I always sing at karaoke?", "Dancing Queen"),
        F("My mum's maiden name is Kowalski.", "What was my mother's surname before she married?", "Kowalski"),
        F("There's a small koi pond in our back garden that I look after.", "What kind of fish live in my garden pond?",
          "koi"),
        F("My favourite podcast is a history show called Tides of Time.", "Which podcast do I listen to most?",
          "Tides of Time"),
        F("Our electricity comes from a company called Brightwave.", "Who supplies our power?", "Brightwave"),
        F("I was born on a leap day, the 29th of February.", "On what date is my birthday?", "29"),
    ],
]

EVERYDAY_UPDATES: list[Update] = [
    U(0, 1, "We moved house, so these days I ride the number 31 tram to work.", "31"),
    U(0, 6, "Ferris retired, so my plumber is a woman called Odette now.", "Odette"),
    U(1, 1, "I moved my accounts from Northgate to Lumen Bank.", "Lumen"),
]
