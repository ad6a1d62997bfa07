"""Regenerate data/prompts/<dataset>.csv (columns prompt,classname,classidx) for the zero-shot diffusion classifier.

The prompts follow the templates of Li et al. 2023 ("Your Diffusion Model is Secretly a Zero-Shot Classifier",
STUDY.md §2) and the class names and orders their reference code uses: the dataset's own label order (torchvision's
for CIFAR-10, STL-10, Pets, Flowers-102, Food-101, FGVC-Aircraft; sorted folder names for ObjectNet's 113 ImageNet-overlap
classes; the standard ImageNet-1k order with OpenAI CLIP's cleaned class names, as shipped by open_clip).
Class names are public facts of each dataset. Run: `python data/prompts/make_prompts.py` (needs pandas, open_clip)."""
from pathlib import Path
import pandas as pd

HERE = Path(__file__).resolve().parent

CIFAR10 = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
STL10 = ['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck']

# Oxford-IIIT Pets in torchvision's order; the prompt adds the species (the reference's wording: none for 'American Bulldog')
PETS = ['Abyssinian', 'American Bulldog', 'American Pit Bull Terrier', 'Basset Hound', 'Beagle', 'Bengal', 'Birman',
        'Bombay', 'Boxer', 'British Shorthair', 'Chihuahua', 'Egyptian Mau', 'English Cocker Spaniel', 'English Setter',
        'German Shorthaired', 'Great Pyrenees', 'Havanese', 'Japanese Chin', 'Keeshond', 'Leonberger', 'Maine Coon',
        'Miniature Pinscher', 'Newfoundland', 'Persian', 'Pomeranian', 'Pug', 'Ragdoll', 'Russian Blue', 'Saint Bernard',
        'Samoyed', 'Scottish Terrier', 'Shiba Inu', 'Siamese', 'Sphynx', 'Staffordshire Bull Terrier', 'Wheaten Terrier',
        'Yorkshire Terrier']
PET_CATS = {'Abyssinian', 'Bengal', 'Birman', 'Bombay', 'British Shorthair', 'Egyptian Mau', 'Maine Coon', 'Persian',
            'Ragdoll', 'Russian Blue', 'Siamese', 'Sphynx'}
PET_NO_SPECIES = {'American Bulldog'}

FLOWERS = ['pink primrose', 'hard-leaved pocket orchid', 'canterbury bells', 'sweet pea', 'english marigold', 'tiger lily',
           'moon orchid', 'bird of paradise', 'monkshood', 'globe thistle', 'snapdragon', "colt's foot", 'king protea',
           'spear thistle', 'yellow iris', 'globe flower', 'purple coneflower', 'peruvian lily', 'balloon flower',
           'giant white arum lily', 'fire lily', 'pincushion flower', 'fritillary', 'red ginger', 'grape hyacinth',
           'corn poppy', 'prince of wales feathers', 'stemless gentian', 'artichoke', 'sweet william', 'carnation',
           'garden phlox', 'love in the mist', 'mexican aster', 'alpine sea holly', 'ruby-lipped cattleya', 'cape flower',
           'great masterwort', 'siam tulip', 'lenten rose', 'barbeton daisy', 'daffodil', 'sword lily', 'poinsettia',
           'bolero deep blue', 'wallflower', 'marigold', 'buttercup', 'oxeye daisy', 'common dandelion', 'petunia',
           'wild pansy', 'primula', 'sunflower', 'pelargonium', 'bishop of llandaff', 'gaura', 'geranium', 'orange dahlia',
           'pink and yellow dahlia', 'cautleya spicata', 'japanese anemone', 'black-eyed susan', 'silverbush',
           'californian poppy', 'osteospermum', 'spring crocus', 'bearded iris', 'windflower', 'tree poppy', 'gazania',
           'azalea', 'water lily', 'rose', 'thorn apple', 'morning glory', 'passion flower', 'lotus', 'toad lily',
           'anthurium', 'frangipani', 'clematis', 'hibiscus', 'columbine', 'desert-rose', 'tree mallow', 'magnolia',
           'cyclamen', 'watercress', 'canna lily', 'hippeastrum', 'bee balm', 'air plant', 'foxglove', 'bougainvillea',
           'camellia', 'mallow', 'mexican petunia', 'bromelia', 'blanket flower', 'trumpet creeper', 'blackberry lily']

# Food-101 folder names (meta/classes.txt, alphabetical); the prompt spells '_' as ' '
FOOD = ['apple_pie', 'baby_back_ribs', 'baklava', 'beef_carpaccio', 'beef_tartare', 'beet_salad', 'beignets', 'bibimbap',
        'bread_pudding', 'breakfast_burrito', 'bruschetta', 'caesar_salad', 'cannoli', 'caprese_salad', 'carrot_cake',
        'ceviche', 'cheese_plate', 'cheesecake', 'chicken_curry', 'chicken_quesadilla', 'chicken_wings',
        'chocolate_cake', 'chocolate_mousse', 'churros', 'clam_chowder', 'club_sandwich', 'crab_cakes', 'creme_brulee',
        'croque_madame', 'cup_cakes', 'deviled_eggs', 'donuts', 'dumplings', 'edamame', 'eggs_benedict', 'escargots',
        'falafel', 'filet_mignon', 'fish_and_chips', 'foie_gras', 'french_fries', 'french_onion_soup', 'french_toast',
        'fried_calamari', 'fried_rice', 'frozen_yogurt', 'garlic_bread', 'gnocchi', 'greek_salad',
        'grilled_cheese_sandwich', 'grilled_salmon', 'guacamole', 'gyoza', 'hamburger', 'hot_and_sour_soup', 'hot_dog',
        'huevos_rancheros', 'hummus', 'ice_cream', 'lasagna', 'lobster_bisque', 'lobster_roll_sandwich',
        'macaroni_and_cheese', 'macarons', 'miso_soup', 'mussels', 'nachos', 'omelette', 'onion_rings', 'oysters',
        'pad_thai', 'paella', 'pancakes', 'panna_cotta', 'peking_duck', 'pho', 'pizza', 'pork_chop', 'poutine',
        'prime_rib', 'pulled_pork_sandwich', 'ramen', 'ravioli', 'red_velvet_cake', 'risotto', 'samosa', 'sashimi',
        'scallops', 'seaweed_salad', 'shrimp_and_grits', 'spaghetti_bolognese', 'spaghetti_carbonara', 'spring_rolls',
        'steak', 'strawberry_shortcake', 'sushi', 'tacos', 'takoyaki', 'tiramisu', 'tuna_tartare', 'waffles']

# FGVC-Aircraft variants (data/variants.txt order); the class name spells '/' as '_'
AIRCRAFT = ['707-320', '727-200', '737-200', '737-300', '737-400', '737-500', '737-600', '737-700', '737-800', '737-900',
            '747-100', '747-200', '747-300', '747-400', '757-200', '757-300', '767-200', '767-300', '767-400', '777-200',
            '777-300', 'A300B4', 'A310', 'A318', 'A319', 'A320', 'A321', 'A330-200', 'A330-300', 'A340-200', 'A340-300',
            'A340-500', 'A340-600', 'A380', 'ATR-42', 'ATR-72', 'An-12', 'BAE 146-200', 'BAE 146-300', 'BAE-125',
            'Beechcraft 1900', 'Boeing 717', 'C-130', 'C-47', 'CRJ-200', 'CRJ-700', 'CRJ-900', 'Cessna 172', 'Cessna 208',
            'Cessna 525', 'Cessna 560', 'Challenger 600', 'DC-10', 'DC-3', 'DC-6', 'DC-8', 'DC-9-30', 'DH-82', 'DHC-1',
            'DHC-6', 'DHC-8-100', 'DHC-8-300', 'DR-400', 'Dornier 328', 'E-170', 'E-190', 'E-195', 'EMB-120', 'ERJ 135',
            'ERJ 145', 'Embraer Legacy 600', 'Eurofighter Typhoon', 'F-16A/B', 'F/A-18', 'Falcon 2000', 'Falcon 900',
            'Fokker 100', 'Fokker 50', 'Fokker 70', 'Global Express', 'Gulfstream IV', 'Gulfstream V', 'Hawk T1', 'Il-76',
            'L-1011', 'MD-11', 'MD-80', 'MD-87', 'MD-90', 'Metroliner', 'Model B200', 'PA-28', 'SR-20', 'Saab 2000',
            'Saab 340', 'Spitfire', 'Tornado', 'Tu-134', 'Tu-154', 'Yak-42']

# ObjectNet's 113 classes that overlap ImageNet: folder names (sorted = label order) and the prompt wording
OBJECTNET = ['alarm_clock', 'backpack', 'banana', 'band_aid', 'basket', 'beer_bottle', 'bench', 'bicycle', 'binder_closed',
             'bottle_cap', 'bread_loaf', 'broom', 'bucket', 'butchers_knife', 'can_opener', 'candle', 'cellphone', 'chair',
             'clothes_hamper', 'coffee_french_press', 'combination_lock', 'computer_mouse', 'desk_lamp', 'doormat',
             'dress', 'dress_shoe_men', 'drill', 'drinking_cup', 'drying_rack_for_dishes', 'envelope', 'fan',
             'frying_pan', 'full_sized_towel', 'hair_dryer', 'hammer', 'hand_towel_or_rag', 'helmet', 'iron_for_clothes',
             'jeans', 'keyboard', 'ladle', 'lampshade', 'laptop_open', 'lemon', 'letter_opener', 'lighter', 'lipstick',
             'match', 'measuring_cup', 'microwave', 'mixing_salad_bowl', 'monitor', 'mug', 'nail_fastener', 'necklace',
             'orange', 'padlock', 'paintbrush', 'paper_towel', 'pen', 'pill_bottle', 'pillow', 'pitcher', 'plastic_bag',
             'plate', 'plunger', 'pop_can', 'portable_heater', 'printer', 'remote_control', 'ruler', 'running_shoe',
             'safety_pin', 'salt_shaker', 'sandal', 'screw', 'shovel', 'skirt', 'sleeping_bag', 'soap_dispenser', 'sock',
             'soup_bowl', 'spatula', 'speaker', 'still_camera', 'strainer', 'stuffed_animal', 'suit_jacket', 'sunglasses',
             'sweater', 'swimming_trunks', 't-shirt', 'teapot', 'tennis_racket', 'tie', 'toaster', 'toilet_paper_roll',
             'trash_bin', 'tray', 'tv', 'umbrella', 'vacuum_cleaner', 'vase', 'wallet', 'watch', 'water_bottle',
             'weight_exercise', 'weight_scale', 'wheel', 'whistle', 'wine_bottle', 'winter_glove', 'wok']
OBJECTNET_NAMES = {'binder_closed': 'binder (closed)', 'butchers_knife': "butcher's knife",
                   'coffee_french_press': 'coffee/french press', 'dress_shoe_men': 'dress shoe (men)',
                   'drying_rack_for_dishes': 'drying rack for plates', 'full_sized_towel': 'bath towel',
                   'hand_towel_or_rag': 'dishrag or hand towel', 'iron_for_clothes': 'iron (for clothes)',
                   'laptop_open': 'laptop (open)', 'mixing_salad_bowl': 'mixing / salad bowl',
                   'nail_fastener': 'nail (fastener)', 'weight_exercise': 'weight (exercise)'}

def rows(names, template, prompt_name=lambda n: n, classname=lambda n: n):
    return [dict(prompt=template.format(prompt_name(n)), classname=classname(n), classidx=i) for i, n in enumerate(names)]

def pet_name(n): return n if n in PET_NO_SPECIES else f"{n} {'cat' if n in PET_CATS else 'dog'}"

def imagenet_names():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # OpenAI CLIP's cleaned ImageNet-1k names
    return list(IMAGENET_CLASSNAMES)

def all_tables():
    return {
        'cifar10': rows(CIFAR10, 'a blurry photo of a {}.'),
        'stl10': rows(STL10, 'a photo of a {}.'),
        'pets': rows(PETS, 'a photo of a {}, a type of pet.', pet_name, str.lower),
        'flowers': rows(FLOWERS, 'a photo of a {}, a type of flower.'),
        'food': rows(FOOD, 'a photo of {}, a type of food.', lambda n: n.replace('_', ' ')),
        'aircraft': rows(AIRCRAFT, 'a photo of a {}, a type of aircraft.', classname=lambda n: n.replace('/', '_')),
        'objectnet': rows(OBJECTNET, 'a photo of a {}.', lambda n: OBJECTNET_NAMES.get(n, n.replace('_', ' '))),
        'imagenet': rows(imagenet_names(), 'a photo of a {}.'),
    }

EXPECTED_CLASSES = dict(cifar10=10, stl10=10, pets=37, flowers=102, food=101, aircraft=100, objectnet=113, imagenet=1000)

if __name__ == '__main__':
    for name, table in all_tables().items():
        df = pd.DataFrame(table, columns=['prompt', 'classname', 'classidx'])
        assert len(df) == EXPECTED_CLASSES[name] and list(df.classidx) == list(range(len(df))), (name, len(df))
        df.to_csv(HERE / f'{name}.csv', index=False, lineterminator='\n')
        print(f'{name}: {len(df)} prompts -> {HERE / name}.csv')
