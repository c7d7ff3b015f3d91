"""Generates the processor benchmark's corpus: images of varied content and sizes, large CSS and JS."""
from __future__ import annotations

import os
import random

from PIL import Image, ImageDraw


def _picture(rng: random.Random, size: tuple[int, int], kind: str) -> Image.Image:
    width, height = size
    if kind == "photo":  # smooth gradients with noise: what cameras make
        image = Image.linear_gradient("L").resize(size).convert("RGB")
        noise = Image.effect_noise(size, rng.randint(10, 40)).convert("RGB")
        return Image.blend(image, noise, 0.35)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(5, 40)):  # flat shapes and text: logos, icons, screenshots
        x, y = rng.randrange(width), rng.randrange(height)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.rectangle((x, y, x + rng.randint(2, width // 2), y + rng.randint(2, height // 2)), fill=colour)
        draw.text((rng.randrange(width), rng.randrange(height)), "File Conveyor", fill=colour)
    return image


def make_images(root: str, count: int, seed: int = 4) -> list[str]:
    """`count` images: JPEG photos, PNG graphics (some with alpha), GIF icons and animations."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    paths = []
    sizes = [(32, 32), (64, 64), (120, 90), (320, 240), (640, 480), (1024, 768), (1600, 1200)]
    for i in range(count):
        size = sizes[min(len(sizes) - 1, int(rng.expovariate(0.6)))]
        kind = ("jpeg", "png", "gif", "agif")[i % 4] if i % 10 else "png"
        path = os.path.join(root, f"img{i:04d}." + {"jpeg": "jpg", "agif": "gif"}.get(kind, kind))
        if kind == "jpeg":
            _picture(rng, size, "photo").save(path, "JPEG", quality=rng.randint(70, 95))
        elif kind == "png":
            image = _picture(rng, size, rng.choice(["photo", "graphic", "graphic"]))
            if rng.random() < 0.3:
                image.putalpha(Image.linear_gradient("L").resize(size))
            image.save(path, "PNG", compress_level=rng.choice([1, 6, 9]))
        elif kind == "gif":
            _picture(rng, (min(size[0], 320), min(size[1], 240)), "graphic").quantize(64).save(path, "GIF")
        else:
            small = (min(size[0], 200), min(size[1], 150))
            frames = [_picture(rng, small, "graphic").quantize(32) for _ in range(4)]
            frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        paths.append(path)
    return paths


CSS_RULE = """
/* block {i}: a comment with url(ignored.png) */
.block-{i} .item:hover > a[href$=".pdf"], .block-{i}::after {{
    background : #fff url("../img/img{a:04d}.png?v={i}") no-repeat 0 0 ;
    border-image: url(../img/img{b:04d}.png) 30 round;
    font-family : "Helvetica Neue", Arial, sans-serif;
    margin : 0 auto ;  padding : {i}px 2em ;
    content: "\\201C";
}}
@media (max-width: {w}px) {{ .block-{i} {{ display : none ; background: url(data:image/gif;base64,R0lGODlhAQABAAAAACw=); }} }}
"""

JS_FUNCTION = """
/**
 * Function {i}: documentation that minifiers drop.
 */
function compute{i}(values, options) {{
    var total = 0;  // running total
    var factor = options && options.factor ? options.factor : {i};
    for (var index = 0; index < values.length; index++) {{
        if (values[index] % 2 === 0) {{
            total += values[index] * factor;
        }} else {{
            total -= values[index] / (factor + 1);
        }}
    }}
    return {{ name: "compute{i}", total: total, text: "a string with // no comment in it" }};
}}
"""


def make_css(path: str, rules: int, images: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rules):
            handle.write(CSS_RULE.format(i=i, a=i % images, b=(i * 7) % images, w=400 + i % 800))


def make_js(path: str, functions: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("/*! bench bundle */\n")
        for i in range(functions):
            handle.write(JS_FUNCTION.format(i=i))
        handle.write("console.log(compute1([1,2,3,4], {factor: 3}).total);\n")
