"""What each built-in dataset is: classes, statistics, the files that hold it, their checksums,
where distributions install them and where they can be downloaded.

`DATASETS` is a plain table so tests (and users with a private mirror) can swap an entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileSpec:
    """One file of a split, as found on disk (or with `.gz` added, compressed)."""

    path: str  # relative to the dataset's folder
    md5: (
        str | None
    )  # of the decompressed bytes; None where no official digest exists (size + parse only)
    size: int | None  # of the decompressed bytes


@dataclass(frozen=True)
class Layout:
    """One way a dataset's files can lie on disk; the first layout of a spec is what downloads give."""

    format: str  # "idx", "cifar10-bin", "cifar10-py", "cifar100-bin" or "cifar100-py" (parsed in datasets._parse)
    train: tuple[FileSpec, ...]
    test: tuple[FileSpec, ...]


@dataclass(frozen=True)
class Download:
    """A file the mirrors serve: one `.gz` of a file, or a `.tar.gz` holding several."""

    filename: str
    md5: str  # of the file as served
    provides: tuple[str, ...]  # FileSpec paths it yields (a tar's members, a .gz's content)

    @property
    def is_archive(self) -> bool:
        return self.filename.endswith((".tar.gz", ".tgz", ".tar"))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    image_size: tuple[int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the training images in [0, 1]
    std: tuple[float, ...]
    layouts: tuple[Layout, ...]
    downloads: tuple[Download, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; each download's filename is appended
    system_dirs: tuple[str, ...] = ()
    package: str | None = None  # the Debian package that installs it

    def files(self, train: bool, layout: Layout | None = None) -> tuple[FileSpec, ...]:
        layout = layout or self.layouts[0]
        return layout.train if train else layout.test


def _idx_layout(
    train_md5: tuple[str, str],
    test_md5: tuple[str, str],
    *,
    train_n: int,
    test_n: int,
    hw: int = 28,
) -> Layout:
    """The four IDX files of the MNIST family: (images, labels) md5 for each split."""

    def split(prefix: str, md5s: tuple[str, str], n: int) -> tuple[FileSpec, ...]:
        return (
            FileSpec(f"{prefix}-images-idx3-ubyte", md5s[0], 16 + n * hw * hw),
            FileSpec(f"{prefix}-labels-idx1-ubyte", md5s[1], 8 + n),
        )

    return Layout("idx", split("train", train_md5, train_n), split("t10k", test_md5, test_n))


def _gz_downloads(layout: Layout, gz_md5: tuple[str, str, str, str]) -> tuple[Download, ...]:
    files = layout.train + layout.test
    return tuple(Download(f"{f.path}.gz", md5, (f.path,)) for f, md5 in zip(files, gz_md5))


_FASHION = _idx_layout(
    ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9"),
    ("8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
    train_n=60000,
    test_n=10000,
)
_MNIST = _idx_layout(
    ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624"),
    ("2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
    train_n=60000,
    test_n=10000,
)


def _cifar_layouts(
    kind: str,
    folder_bin: str,
    folder_py: str,
    train_bin: list[str],
    test_bin: str,
    record: int,
    py_md5: dict[str, str],
) -> tuple[Layout, Layout]:
    """CIFAR's binary layout (no official per-file digest: checked by exact size and parsing,
    or trusted as extracted from the md5-verified archive) and its Python layout (md5-verified)."""
    binary = Layout(
        f"{kind}-bin",
        tuple(
            FileSpec(f"{folder_bin}/{n}", None, record * (50000 // len(train_bin)))
            for n in train_bin
        ),
        (FileSpec(f"{folder_bin}/{test_bin}", None, record * 10000),),
    )
    names = list(py_md5)
    python = Layout(
        f"{kind}-py",
        tuple(FileSpec(f"{folder_py}/{n}", py_md5[n], None) for n in names[:-1]),
        (FileSpec(f"{folder_py}/{names[-1]}", py_md5[names[-1]], None),),
    )
    return binary, python


_CIFAR10_LAYOUTS = _cifar_layouts(
    "cifar10",
    "cifar-10-batches-bin",
    "cifar-10-batches-py",
    [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test_batch.bin",
    3073,
    {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
)
_CIFAR100_LAYOUTS = _cifar_layouts(
    "cifar100",
    "cifar-100-binary",
    "cifar-100-python",
    ["train.bin"],
    "test.bin",
    3074,
    {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
)

_CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail "
    "snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout "
    "tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


def _cifar_spec(
    name: str,
    dashed: str,
    layouts: tuple[Layout, Layout],
    archive_md5: str,
    *,
    classes: tuple[str, ...],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> DatasetSpec:
    """CIFAR-10 and CIFAR-100 come alike: 32 x 32 colour images, downloaded as one archive, the
    binary version's `{dashed}-binary.tar.gz` (which holds the binary layout's files), from the
    authors' page; distributions install them under either spelling of the name."""
    binary = layouts[0]
    return DatasetSpec(
        name=name,
        channels=3,
        image_size=(32, 32),
        classes=classes,
        mean=mean,
        std=std,
        layouts=layouts,
        downloads=(
            Download(
                f"{dashed}-binary.tar.gz",
                archive_md5,
                tuple(f.path for f in binary.train + binary.test),
            ),
        ),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        system_dirs=(f"/usr/share/datasets/{name}", f"/usr/share/datasets/{dashed}"),
    )


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        channels=1,
        image_size=(28, 28),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=(0.2860,),
        std=(0.3530,),  # of the 60,000 training images (checked by a test)
        layouts=(_FASHION,),
        downloads=_gz_downloads(
            _FASHION,
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        channels=1,
        image_size=(28, 28),
        classes=tuple(str(d) for d in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        layouts=(_MNIST,),
        downloads=_gz_downloads(
            _MNIST,
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        system_dirs=("/usr/share/datasets/mnist",),
    ),
    "cifar10": _cifar_spec(
        "cifar10",
        "cifar-10",
        _CIFAR10_LAYOUTS,
        "c32a1d4ab5d03f1284b67883e8d87530",
        classes=(
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
        ),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _cifar_spec(
        "cifar100",
        "cifar-100",
        _CIFAR100_LAYOUTS,
        "03b5dce01913d631647c71ecec9e9cb8",
        classes=tuple(_CIFAR100_CLASSES),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}
