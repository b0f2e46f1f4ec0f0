"""Curated word lists for realistic sampled strings (no external data).

`CITIES` rows carry the country code, airport and coordinates so that a scene can keep a
city, its airport and its position consistent.
"""

from __future__ import annotations

# (city, country name, ISO 3166 alpha-2, IATA airport, lat, lon, currency)
CITIES: list[tuple[str, str, str, str, float, float, str]] = [
    ("Lisbon", "Portugal", "PT", "LIS", 38.7223, -9.1393, "EUR"),
    ("Paris", "France", "FR", "CDG", 48.8566, 2.3522, "EUR"),
    ("London", "United Kingdom", "GB", "LHR", 51.5072, -0.1276, "GBP"),
    ("Berlin", "Germany", "DE", "BER", 52.52, 13.405, "EUR"),
    ("Madrid", "Spain", "ES", "MAD", 40.4168, -3.7038, "EUR"),
    ("Rome", "Italy", "IT", "FCO", 41.9028, 12.4964, "EUR"),
    ("Amsterdam", "Netherlands", "NL", "AMS", 52.3676, 4.9041, "EUR"),
    ("Vienna", "Austria", "AT", "VIE", 48.2082, 16.3738, "EUR"),
    ("Prague", "Czechia", "CZ", "PRG", 50.0755, 14.4378, "CZK"),
    ("Copenhagen", "Denmark", "DK", "CPH", 55.6761, 12.5683, "DKK"),
    ("Stockholm", "Sweden", "SE", "ARN", 59.3293, 18.0686, "SEK"),
    ("Oslo", "Norway", "NO", "OSL", 59.9139, 10.7522, "NOK"),
    ("Dublin", "Ireland", "IE", "DUB", 53.3498, -6.2603, "EUR"),
    ("Zurich", "Switzerland", "CH", "ZRH", 47.3769, 8.5417, "CHF"),
    ("Warsaw", "Poland", "PL", "WAW", 52.2297, 21.0122, "PLN"),
    ("Athens", "Greece", "GR", "ATH", 37.9838, 23.7275, "EUR"),
    ("Istanbul", "Turkey", "TR", "IST", 41.0082, 28.9784, "TRY"),
    ("New York", "United States", "US", "JFK", 40.7128, -74.006, "USD"),
    ("San Francisco", "United States", "US", "SFO", 37.7749, -122.4194, "USD"),
    ("Chicago", "United States", "US", "ORD", 41.8781, -87.6298, "USD"),
    ("Boston", "United States", "US", "BOS", 42.3601, -71.0589, "USD"),
    ("Seattle", "United States", "US", "SEA", 47.6062, -122.3321, "USD"),
    ("Toronto", "Canada", "CA", "YYZ", 43.6532, -79.3832, "CAD"),
    ("Vancouver", "Canada", "CA", "YVR", 49.2827, -123.1207, "CAD"),
    ("Mexico City", "Mexico", "MX", "MEX", 19.4326, -99.1332, "MXN"),
    ("Sao Paulo", "Brazil", "BR", "GRU", -23.5505, -46.6333, "BRL"),
    ("Buenos Aires", "Argentina", "AR", "EZE", -34.6037, -58.3816, "ARS"),
    ("Tokyo", "Japan", "JP", "HND", 35.6762, 139.6503, "JPY"),
    ("Osaka", "Japan", "JP", "KIX", 34.6937, 135.5023, "JPY"),
    ("Seoul", "South Korea", "KR", "ICN", 37.5665, 126.978, "KRW"),
    ("Singapore", "Singapore", "SG", "SIN", 1.3521, 103.8198, "SGD"),
    ("Bangkok", "Thailand", "TH", "BKK", 13.7563, 100.5018, "THB"),
    ("Sydney", "Australia", "AU", "SYD", -33.8688, 151.2093, "AUD"),
    ("Melbourne", "Australia", "AU", "MEL", -37.8136, 144.9631, "AUD"),
    ("Auckland", "New Zealand", "NZ", "AKL", -36.8485, 174.7633, "NZD"),
    ("Cape Town", "South Africa", "ZA", "CPT", -33.9249, 18.4241, "ZAR"),
    ("Nairobi", "Kenya", "KE", "NBO", -1.2921, 36.8219, "KES"),
    ("Dubai", "United Arab Emirates", "AE", "DXB", 25.2048, 55.2708, "AED"),
    ("Mumbai", "India", "IN", "BOM", 19.076, 72.8777, "INR"),
    ("Hong Kong", "China", "HK", "HKG", 22.3193, 114.1694, "HKD"),
]
CITY_NAMES = [c[0] for c in CITIES]
COUNTRIES = sorted({c[1] for c in CITIES})
COUNTRY_CODES = sorted({c[2] for c in CITIES})
AIRPORTS = [c[3] for c in CITIES]
CURRENCIES = sorted({c[6] for c in CITIES} | {"USD", "EUR", "GBP", "JPY", "CHF"})

FIRST_NAMES = [
    "Ana",
    "Bruno",
    "Chloe",
    "Daniel",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Liam",
    "Maria",
    "Noah",
    "Olivia",
    "Pedro",
    "Quinn",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "William",
    "Xin",
    "Yara",
    "Zoe",
    "Amara",
    "Bianca",
    "Carlos",
    "Dmitri",
    "Emma",
    "Felix",
    "Hana",
    "Ivan",
    "Julia",
    "Kofi",
    "Lucia",
    "Mateo",
    "Nadia",
    "Oscar",
]
LAST_NAMES = [
    "Silva",
    "Martin",
    "Smith",
    "Muller",
    "Rossi",
    "Garcia",
    "Novak",
    "Jensen",
    "Kowalski",
    "Dubois",
    "Tanaka",
    "Kim",
    "Okafor",
    "Haddad",
    "Costa",
    "Fischer",
    "Moreau",
    "Lopez",
    "Nguyen",
    "Patel",
    "Schmidt",
    "Bianchi",
    "Andersson",
    "Murphy",
    "Santos",
    "Weber",
    "Ferreira",
    "Ivanova",
    "Sato",
    "Mendes",
    "Brown",
    "Wilson",
]
COMPANIES = """Acme Corp|Northwind Traders|Globex|Initech|Umbrella Logistics|Stark Industries|
Blue Harbor Labs|Pioneer Analytics|Greenfield Foods|Nimbus Cloud|Atlas Consulting|Redwood Media|
Vertex Health|Brightline Energy|Cobalt Software|Summit Partners|Lumen Design|Harbor & Co|
Quantum Retail|Oakridge Finance""".replace("\n", "").split("|")
STREETS = """Rua Augusta|Rue de Rivoli|Baker Street|Unter den Linden|Gran Via|Via del Corso|
Prinsengracht|Maple Avenue|Oak Street|Main Street|King Street|Market Street|Elm Road|
Harbour Road|Station Road|Park Lane|High Street|Queen Street|Church Street|Mill Lane""".replace(
    "\n", ""
).split("|")
PRODUCTS = """wireless headphones|running shoes|espresso machine|mechanical keyboard|yoga mat|
stainless steel water bottle|backpack|smartwatch|desk lamp|air fryer|bluetooth speaker|
electric toothbrush|rain jacket|coffee grinder|standing desk|office chair|USB-C charger|
noise-cancelling earbuds|hiking boots|cast iron skillet|blender|e-reader|portable monitor|
winter gloves|travel pillow|chef's knife|robot vacuum|sunglasses|gaming mouse|tent""".replace(
    "\n", ""
).split("|")
CUISINES = [
    "italian",
    "japanese",
    "mexican",
    "thai",
    "indian",
    "french",
    "chinese",
    "greek",
    "spanish",
    "vietnamese",
    "korean",
    "lebanese",
    "turkish",
    "ethiopian",
    "peruvian",
    "portuguese",
    "moroccan",
    "american",
]
LANGUAGES = ["en", "fr", "de", "es", "it", "pt", "nl", "ja", "ko", "zh", "sv", "pl"]
LANGUAGE_NAMES = [
    "English",
    "French",
    "German",
    "Spanish",
    "Italian",
    "Portuguese",
    "Dutch",
    "Japanese",
    "Korean",
    "Chinese",
    "Swedish",
    "Polish",
]
COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
    "teal",
    "navy",
    "beige",
    "grey",
    "pink",
    "turquoise",
]
STOCK_SYMBOLS = [
    "AAPL",
    "MSFT",
    "GOOGL",
    "AMZN",
    "NVDA",
    "META",
    "TSLA",
    "NFLX",
    "IBM",
    "ORCL",
    "INTC",
    "AMD",
    "SAP",
    "ASML",
    "KO",
    "PEP",
    "DIS",
    "V",
    "MA",
    "JPM",
]
TITLES = """Quarterly planning|Team sync|Project kickoff|Budget review|Design review|
Client call|Sprint retrospective|Dentist appointment|Lunch with Sam|Product demo|
Weekly one-on-one|Onboarding session|Board meeting|Yoga class|Parent-teacher meeting|
Code review|Marketing brainstorm|Flight check-in|Dinner reservation|Book club""".replace(
    "\n", ""
).split("|")
SENTENCES = """Running about ten minutes late, sorry.|Can we move our meeting to tomorrow?|
Thanks for the update, looks good to me.|Please find the details below.|
The package arrived today, thank you!|Reminder: the report is due on Friday.|
Let me know if the new time works for you.|Dinner is booked, see you there.|
Could you send me the latest figures?|Happy to help with the launch next week.|
The flight has been confirmed.|Please call me back when you have a minute.|
Great news, the contract was signed.|I have shared the slides with the team.|
Don't forget to bring your passport.""".replace("\n", "").split("|")
QUERIES = """quarterly report|invoice|climate policy|electric cars|team offsite|
renewable energy|machine learning|travel insurance|apartment lease|job offer|
space exploration|stock market|football results|healthy recipes|jazz|
vintage cameras|board games|coffee""".replace("\n", "").split("|")
CATEGORIES = [
    "electronics",
    "books",
    "clothing",
    "home",
    "sports",
    "toys",
    "beauty",
    "garden",
    "grocery",
    "restaurant",
    "cafe",
    "museum",
    "park",
    "pharmacy",
    "supermarket",
]
GENRES = [
    "drama",
    "comedy",
    "thriller",
    "action",
    "documentary",
    "animation",
    "horror",
    "romance",
    "sci-fi",
]
ACTIVITIES = [
    "running",
    "cycling",
    "swimming",
    "walking",
    "yoga",
    "hiking",
    "rowing",
    "strength_training",
]
FOODS = """banana|oatmeal|grilled chicken|brown rice|apple|greek yogurt|salmon|avocado|
almonds|broccoli|lentil soup|whole wheat bread|eggs|quinoa salad""".replace("\n", "").split("|")
INGREDIENTS = [
    "tomato",
    "garlic",
    "onion",
    "basil",
    "chicken",
    "rice",
    "pasta",
    "spinach",
    "mushroom",
    "lemon",
    "chickpeas",
    "tofu",
    "potato",
    "carrot",
    "ginger",
]
SPECIALTIES = [
    "cardiology",
    "dermatology",
    "pediatrics",
    "orthopedics",
    "neurology",
    "general_practice",
    "ophthalmology",
    "psychiatry",
]
MOVIES = """The Silent Harbor|Midnight Express Line|Paper Moons|The Last Orchard|
Echoes of Mars|City of Glass|A Quiet Summer|The Long Way North|Neon Tide|Iron Garden""".replace(
    "\n", ""
).split("|")
ARTISTS = """Nina Simone|Miles Davis|Daft Punk|Adele|Radiohead|Billie Eilish|Fleetwood Mac|
Bob Marley|Norah Jones|Coldplay|Taylor Swift|Kendrick Lamar""".replace("\n", "").split("|")
TOPICS = """climate|elections|artificial intelligence|space|football|public health|
housing|energy prices|cybersecurity|tourism""".replace("\n", "").split("|")
ROOMS = ["living room", "kitchen", "bedroom", "office", "hallway", "garage", "bathroom", "garden"]
ROLES = """software engineer|teacher|nurse|product manager|student|freelance designer|
retired architect|small-business owner|journalist|data analyst|chef|consultant""".replace(
    "\n", ""
).split("|")
WORDS = [
    "alpha",
    "bright",
    "calm",
    "daily",
    "early",
    "fresh",
    "green",
    "happy",
    "local",
    "main",
    "north",
    "open",
    "quick",
    "smart",
    "solid",
    "summer",
    "urban",
    "vital",
]
