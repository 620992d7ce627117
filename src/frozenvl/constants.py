"""frozenvl's constants, in one place: the media markers, the image statistics and the saved-file names."""

# Media markers in Flamingo text: one <image> where an image (or a video) goes, <|endofchunk|> where the text that
# belongs to it ends. Both are added to the LM's tokenizer as special tokens.
IMAGE_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"

# Image normalisation statistics (per RGB channel, on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP; FLAME and the CLIP baseline train with these
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# A saved model folder (save_pretrained / from_pretrained, for every model of frozenvl).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
