"""Short agent facts with held-out, paraphrased questions (the sleep acceptance suite).

Written for this project: user preferences, names, dates and project details,
the kind of thing an assistant should remember overnight. Each question is
phrased differently from the fact; `answer` is what a correct reply contains.
"""
from __future__ import annotations

from typing import NamedTuple


class Fact(NamedTuple):
    text: str
    question: str
    answer: str


SET_A = [
    Fact("The user's daughter is named Maya.", "What is the name of my daughter?", "Maya"),
    Fact("The user's favourite tea is jasmine green tea.", "Which kind of tea do I like best?", "jasmine"),
    Fact("The user's dog is a beagle called Biscuit.", "What is my dog's name?", "Biscuit"),
    Fact("Project Falcon launches on 14 February 2027.", "When is Project Falcon going to launch?", "February"),
    Fact("The user's dentist is Dr. Okafor.", "Who is my dentist?", "Okafor"),
    Fact("The user is allergic to peanuts.", "What food am I allergic to?", "peanuts"),
    Fact("The user's manager is called Ingrid Solberg.", "Who is my manager?", "Ingrid"),
    Fact("The user's car is a blue Subaru Outback.", "What make is my car?", "Subaru"),
    Fact("The weekly team meeting is on Thursday afternoon.", "On which day is our weekly team meeting?", "Thursday"),
    Fact("The user grew up in the city of Porto.", "In which city did I grow up?", "Porto"),
    Fact("The user's wifi network is named OrangeFox.", "What is the name of my wifi network?", "OrangeFox"),
    Fact("The user plays the cello in a community orchestra.", "Which instrument do I play?", "cello"),
    Fact("The quarterly report is due on the 30th of June.", "When is the quarterly report due?", "June"),
    Fact("The user's favourite author is Ursula Le Guin.", "Which author do I like most?", "Le Guin"),
    Fact("The staging server runs on port 8443.", "Which port does the staging server use?", "8443"),
    Fact("The user's brother Tomas lives in Vancouver.", "Where does my brother live?", "Vancouver"),
    Fact("The user prefers window seats on flights.", "What kind of seat do I prefer when flying?", "window"),
    Fact("The user's anniversary is on the 9th of September.", "When is my anniversary?", "September"),
    Fact("Project Heron is written in the Rust language.", "What programming language is Project Heron written in?", "Rust"),
    Fact("The user's gym membership is at Ironworks Fitness.", "Where do I have a gym membership?", "Ironworks"),
]

SET_B = [
    Fact("The user's son is named Elias.", "What is my son called?", "Elias"),
    Fact("The user's favourite dessert is lemon tart.", "Which dessert do I love most?", "lemon"),
    Fact("The user's cat is a tabby named Pixel.", "What is my cat's name?", "Pixel"),
    Fact("Project Osprey ends on 3 March 2027.", "When does Project Osprey finish?", "March"),
    Fact("The user's doctor is Dr. Haruki Tanaka.", "Who is my doctor?", "Tanaka"),
    Fact("The user cannot eat gluten.", "Which ingredient must I avoid?", "gluten"),
    Fact("The user's mentor is called Beatrice Moreau.", "Who is my mentor?", "Beatrice"),
    Fact("The user rides a green Trek bicycle.", "What brand is my bicycle?", "Trek"),
    Fact("The design review happens every Monday morning.", "On which day is the design review?", "Monday"),
    Fact("The user was born in the town of Galway.", "In which town was I born?", "Galway"),
    Fact("The user's locker code is 4471.", "What is my locker code?", "4471"),
    Fact("The user speaks Finnish as a second language.", "Which second language do I speak?", "Finnish"),
    Fact("The tax filing deadline for the user is in April.", "In which month is my tax filing deadline?", "April"),
    Fact("The user's favourite band is Radiohead.", "What band do I like best?", "Radiohead"),
    Fact("The production database is hosted in Frankfurt.", "Where is the production database hosted?", "Frankfurt"),
    Fact("The user's sister Lena works as an architect.", "What is my sister's job?", "architect"),
    Fact("The user likes to run every morning at six.", "At what time do I go running?", "six"),
    Fact("The user's wedding was held in Lisbon.", "Where was my wedding?", "Lisbon"),
    Fact("Project Kestrel uses a Postgres database.", "Which database does Project Kestrel use?", "Postgres"),
    Fact("The user volunteers at the Riverside animal shelter.", "Where do I volunteer?", "Riverside"),
]

SET_C = [  # a third disjoint set, for K = 3 sequential sleeps
    Fact("The user's niece is named Clara.", "What is my niece called?", "Clara"),
    Fact("The user's favourite fruit is mango.", "Which fruit do I like best?", "mango"),
    Fact("The user's parrot is called Captain.", "What is my parrot's name?", "Captain"),
    Fact("Project Albatross starts on 2 May 2027.", "When does Project Albatross start?", "May"),
    Fact("The user's accountant is Mr. Delgado.", "Who is my accountant?", "Delgado"),
    Fact("The user is allergic to penicillin.", "Which medicine am I allergic to?", "penicillin"),
    Fact("The user's team lead is called Oskar Lindqvist.", "Who leads my team?", "Oskar"),
    Fact("The user drives a red Volvo estate.", "What make is my car?", "Volvo"),
    Fact("The sprint planning is on Wednesday mornings.", "On which day is sprint planning?", "Wednesday"),
    Fact("The user studied at the University of Leeds.", "Where did I study?", "Leeds"),
    Fact("The user's bike lock code is 2093.", "What is my bike lock code?", "2093"),
    Fact("The user plays the trumpet in a jazz band.", "Which instrument do I play in the band?", "trumpet"),
    Fact("The user's passport expires in October 2029.", "When does my passport expire?", "October"),
    Fact("The user's favourite painter is Frida Kahlo.", "Which painter do I admire most?", "Kahlo"),
    Fact("The backup server lives in the Dublin data centre.", "Where is the backup server?", "Dublin"),
    Fact("The user's cousin Amir is a pilot.", "What does my cousin do for a living?", "pilot"),
    Fact("The user meditates every evening at nine.", "At what time do I meditate?", "nine"),
    Fact("The user's first job was at a bakery in Bristol.", "Where was my first job?", "bakery"),
    Fact("Project Condor is built with the Go language.", "Which language is Project Condor built with?", "Go"),
    Fact("The user swims at the Northside leisure centre.", "Where do I go swimming?", "Northside"),
]

# A second development set, written on 2026-12-06 before any tuning on it: facts the way people
# drop them into a chat (first person, asides, two facts in one message, numbers and codes), each
# with a question worded unlike the message. SET_A's variants are what the recipe was tuned on
# for months; these are what shows whether a change generalises. Development only: tune on it.
CHAT = [
    Fact("Ugh, just got back from the vet. Turns out Mochi, my cat, has a thyroid problem.",
         "What health issue does my cat have?", "thyroid"),
    Fact("I've been learning Portuguese on weekends because we're relocating to Recife next spring.",
         "Which city are we moving to?", "Recife"),
    Fact("Btw my partner's name is Joaquin, in case he calls while I'm out.", "What is my partner called?", "Joaquin"),
    Fact("I can't do dairy, it wrecks my stomach, so no cheese in the recipes please.",
         "What kind of food should you leave out of my recipes?", "dairy"),
    Fact("My standing desk order number is 31507 if you need to chase it.",
         "What's the order number for my standing desk?", "31507"),
    Fact("We named the new repo lighthouse after a long argument.", "What did we call the new repository?", "lighthouse"),
    Fact("I'm usually up by 5:30 because I swim before work.", "What exercise do I do before work?", "swim"),
    Fact("My landlord, Mrs. Abernathy, wants the rent by the 3rd of each month.", "Who is my landlord?", "Abernathy"),
    Fact("I drive a 2014 Honda Fit, it's ancient but it runs.", "Which car model do I drive?", "Fit"),
    Fact("Our book club is reading The Remains of the Day this month.", "What book is my book club reading right now?",
         "Remains of the Day"),
    Fact("I ran the Berlin marathon last year in just under four hours.", "Which marathon did I run last year?", "Berlin"),
    Fact("Quick note: the wifi password at the cabin is pinecone77.", "What's the wifi password at the cabin?",
         "pinecone77"),
    Fact("My therapist moved my sessions to Tuesday evenings.", "When are my therapy sessions now?", "Tuesday"),
    Fact("I'm a nurse on the night shift at St. Brigid's hospital.", "At which hospital do I work?", "Brigid"),
    Fact("My grandmother turns ninety on the 18th of August, we're throwing her a party.",
         "When is my grandmother's birthday?", "August"),
    Fact("I switched our CI from Jenkins to Buildkite last sprint.", "Which CI system do we use now?", "Buildkite"),
    Fact("Honestly I hate cilantro, it tastes like soap to me.", "Which herb do I dislike?", "cilantro"),
    Fact("My daughter Ayla just started violin lessons.", "What instrument is my daughter learning?", "violin"),
    Fact("The kids go to Maple Grove Elementary, pickup is at 3.", "What school do my kids go to?", "Maple Grove"),
    Fact("I keep my spare house key with my neighbour Dmitri.", "Who has my spare key?", "Dmitri"),
]
