"""What CIFAR-10 is and how its copies are laid out: classes, shapes, file names, checksums.

Krizhevsky (2009), "Learning Multiple Layers of Features from Tiny Images", defines the
dataset: 60,000 32x32 RGB images in 10 classes, 50,000 for training (five data batches of
10,000) and 10,000 for testing, distributed as python pickles or binary records.
"""

from __future__ import annotations

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (32, 32, 3)
# Per-channel statistics of the training set in [0, 1] pixel units (the values in common use
# since the original ResNet reproductions), for normalization.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
OFFICIAL_BATCH_SIZE = 10_000  # 5 data batches (50,000 train images) and a test batch

SOURCES = ("auto", "path", "download", "tfds")

PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
PYTHON_DIR = "cifar-10-batches-py"
BINARY_ARCHIVE = "cifar-10-binary.tar.gz"
BINARY_DIR = "cifar-10-batches-bin"
CHECKSUM_FILE = "SHA256SUMS"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
IMAGE_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz")
BINARY_RECORD = 1 + 32 * 32 * 3  # one label byte, then 3072 pixel bytes (R, G, B planes)
