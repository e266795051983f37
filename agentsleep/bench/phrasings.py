"""Held-out test facts, told the way agents really hear them (the phrasing benchmark).

Written for this project and committed before any tuning on them; they are
read only to measure a finished recipe, never to choose one (bench/facts.py is
the development set). Three voices:

- FIRST_PERSON: what the user says about themselves ("I'm ...", "My ...", "Our ...");
- THIRD_PERSON: statements about other people, places and projects;
- ASSISTANT: what the assistant said back ("Noted: your ...", "I've booked ...").

Each question is asked the way the user would ask it the next day, phrased
differently from the fact; `answer` is what a correct reply contains.
"""
from __future__ import annotations

from .facts import Fact

FIRST_PERSON = [
    Fact("I'm allergic to shellfish, so no shrimp for me.", "Which kind of food gives me an allergic reaction?", "shellfish"),
    Fact("My manager is Rosalind Achterberg.", "Who do I report to at work?", "Achterberg"),
    Fact("Our office moved to the Lindqvist Building last month.", "Which building is our office in now?", "Lindqvist"),
    Fact("I take the 7:15 ferry to work every day.", "What time is the ferry I catch in the morning?", "7:15"),
    Fact("My niece Saoirse turns ten in October.", "In which month is my niece's birthday?", "October"),
    Fact("I drive a silver Mazda CX-5.", "Which car model do I own?", "CX-5"),
    Fact("My passport number ends in 8842.", "What are the last digits of my passport number?", "8842"),
    Fact("I'm learning the bassoon on weekends.", "What instrument am I practising these days?", "bassoon"),
    Fact("We named our parrot Captain Quill.", "What's the name of our parrot?", "Quill"),
    Fact("I usually order an oat flat white.", "What coffee do I normally get?", "flat white"),
    Fact("My landlord is a man called Desmond Oyelaran.", "Who owns the flat I rent?", "Oyelaran"),
    Fact("I'm vegetarian but I still eat eggs.", "What kind of diet do I follow?", "vegetarian"),
    Fact("Our team's standup is at 9:45.", "When does our daily standup start?", "9:45"),
    Fact("I grew up in a small town called Tromsø.", "Which town am I originally from?", "Tromsø"),
    Fact("My physiotherapist is Dr. Anneliese Vogt.", "Who treats my back injury?", "Vogt"),
    Fact("I support Celtic in football.", "Which football club am I a fan of?", "Celtic"),
    Fact("My sister-in-law Farah runs a bakery in Leeds.", "In which city does Farah have her bakery?", "Leeds"),
    Fact("I keep my spare house key with the neighbour at number 14.", "Which neighbour has my spare key?", "14"),
    Fact("My blood type is O negative.", "What's my blood group?", "O negative"),
    Fact("I'm training for the Rotterdam marathon in April.", "Which marathon am I preparing for?", "Rotterdam"),
    Fact("Our wedding anniversary is on the 22nd of May.", "In which month is our anniversary?", "May"),
    Fact("My laptop is a ThinkPad X1 Carbon.", "What laptop do I use?", "ThinkPad"),
    Fact("I'm on the night shift every second Friday.", "How often do I work nights?", "second Friday"),
    Fact("My daughter's school is Hillcrest Primary.", "Which school does my daughter attend?", "Hillcrest"),
    Fact("I hate cilantro; it tastes like soap to me.", "Which herb can't I stand?", "cilantro"),
    Fact("My GitHub handle is quietmarmot.", "What's my username on GitHub?", "quietmarmot"),
    Fact("We're renovating the kitchen with a contractor named Baptiste.", "Who is the contractor doing our kitchen?", "Baptiste"),
    Fact("I take 50 mg of sertraline every morning.", "Which medication do I take daily?", "sertraline"),
    Fact("My favourite film is Spirited Away.", "Which movie do I love most?", "Spirited Away"),
    Fact("Our dog Juniper is a border collie.", "What breed is Juniper?", "collie"),
    Fact("I'm flying to Reykjavik on the 3rd of March.", "Where am I travelling to in March?", "Reykjavik"),
    Fact("My bank is Nordhavn Savings.", "Which bank do I use?", "Nordhavn"),
    Fact("I'm the treasurer of the chess club.", "What role do I hold in the chess club?", "treasurer"),
    Fact("My mother's maiden name is Kowalczyk.", "What was my mum's surname before she married?", "Kowalczyk"),
    Fact("I prefer aisle seats on trains.", "Where do I like to sit on a train?", "aisle"),
    Fact("Our home router's admin page is at 192.168.4.1.", "What's the address of our router's admin page?", "192.168.4.1"),
    Fact("My accountant is Priscilla Mbeki.", "Who does my accounts?", "Mbeki"),
    Fact("I volunteer at the Eastside food bank on Sundays.", "Where do I volunteer?", "food bank"),
    Fact("My grandfather was a lighthouse keeper.", "What job did my grandfather have?", "lighthouse"),
    Fact("I'm saving up for a trip to Patagonia.", "Which place am I saving money to visit?", "Patagonia"),
]

THIRD_PERSON = [
    Fact("Henrietta Blom is the head of procurement.", "Who leads procurement?", "Blom"),
    Fact("The Marlowe account renews on 1 August.", "When is the Marlowe account up for renewal?", "August"),
    Fact("Kenji's flight from Osaka lands at gate B12.", "At which gate does Kenji arrive?", "B12"),
    Fact("The billing service is written in Elixir.", "What language is the billing service built with?", "Elixir"),
    Fact("Mrs. Adeyemi teaches chemistry at the high school.", "Which subject does Mrs. Adeyemi teach?", "chemistry"),
    Fact("The new warehouse is in Rotterdam's Waalhaven district.", "Where is the new warehouse located?", "Waalhaven"),
    Fact("Olek Nowicki is the project's security lead.", "Who is in charge of security on the project?", "Nowicki"),
    Fact("The board meets on the last Wednesday of each month.", "On what day does the board hold its meetings?", "Wednesday"),
    Fact("Greta owns a vintage Vespa scooter.", "What kind of scooter does Greta have?", "Vespa"),
    Fact("The Orion release was delayed to November.", "When is Orion going to ship now?", "November"),
    Fact("Dr. Castellanos runs the sleep clinic at St. Jude's.", "Who is in charge of the sleep clinic?", "Castellanos"),
    Fact("The shared drive's quota is 2 terabytes.", "How much storage does the shared drive allow?", "2 terabytes"),
    Fact("Ravi's wife is a marine biologist.", "What does Ravi's wife do for work?", "biologist"),
    Fact("The analytics cluster is hosted in Montreal.", "Where do the analytics servers live?", "Montreal"),
    Fact("Lucia plays goalkeeper for the office football team.", "Which position does Lucia play?", "goalkeeper"),
    Fact("The client Bergstrom & Pike pays on net-60 terms.", "What are Bergstrom & Pike's payment terms?", "60"),
    Fact("Tobias is moving to the Singapore office.", "Which office is Tobias transferring to?", "Singapore"),
    Fact("The company picnic will be at Fernhill Park.", "Where will the company picnic take place?", "Fernhill"),
    Fact("Agnieszka speaks fluent Portuguese.", "Which foreign language is Agnieszka fluent in?", "Portuguese"),
    Fact("The VPN gateway uses WireGuard.", "What protocol does the VPN gateway run?", "WireGuard"),
]

ASSISTANT = [
    Fact("Noted: your flight to Lima leaves at 9:40.", "What time does my flight to Lima depart?", "9:40"),
    Fact("Got it, you prefer your steak medium rare.", "How do I like my steak cooked?", "medium rare"),
    Fact("I've booked your dentist appointment with Dr. Haugen for Tuesday.", "Which day is my dentist appointment?", "Tuesday"),
    Fact("I'll remember that your cousin Matteo lives in Trieste.", "Where does Matteo live?", "Trieste"),
    Fact("Your hotel in Kyoto is the Kamogawa Inn.", "What's the name of the hotel I'm staying at in Kyoto?", "Kamogawa"),
    Fact("Understood, you don't want meetings before 10 am.", "What's the earliest I accept meetings?", "10"),
    Fact("I've saved your gate code as 5519.", "What is the code for my gate?", "5519"),
    Fact("You mentioned your favourite painter is Hilma af Klint.", "Which artist do I admire most?", "Klint"),
    Fact("Your car is due for its service at Halvorsen Motors.", "Which garage services my car?", "Halvorsen"),
    Fact("Noted, your son's football practice is on Wednesday evenings.", "On what day does my son have football practice?", "Wednesday"),
    Fact("I've added oat milk to your shopping list, since you're lactose intolerant.", "Why do I avoid regular milk?", "lactose"),
    Fact("Your insurance policy number is HX-20417.", "What's my insurance policy number?", "20417"),
    Fact("Sure, I'll call you Bex from now on.", "What nickname do I go by?", "Bex"),
    Fact("Your yoga class with Imogen starts at 6:30 pm.", "When does my yoga class begin?", "6:30"),
    Fact("As you asked: your library books are due back on 19 June.", "When do my library books need to be returned?", "June"),
    Fact("Your new phone number ends in 3306.", "What are the last four digits of my new phone number?", "3306"),
    Fact("I've noted that your favourite cuisine is Ethiopian.", "What kind of food do I like best?", "Ethiopian"),
    Fact("Your tenant, Mr. Abernathy, pays rent on the 5th.", "Who is my tenant?", "Abernathy"),
    Fact("Okay, your preferred airline is Finnair.", "Which airline do I like to fly with?", "Finnair"),
    Fact("Your book club is reading Middlemarch this month.", "What book is my book club reading?", "Middlemarch"),
]

SETS = {"first_person": FIRST_PERSON, "third_person": THIRD_PERSON, "assistant": ASSISTANT}
