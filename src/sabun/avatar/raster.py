"""Headless OpenGL rendering of a posed character, on the CPU through EGL and Mesa's llvmpipe.

One `Renderer` holds one posed character on the GPU side (vertex buffers and textures, uploaded
once) and draws any number of shots of it. Every shot is drawn at `supersample` times the output
size with 4x MSAA into a linear half-float buffer, averaged down (anti-aliasing by area, in linear
light) and composited onto the background, so the output depends only on the inputs: the same
model and settings give the same pixels on every run.

Styles:
- `toon`: MToon's two-tone shading as VRM 1.0 defines it (lit and shade colours, shading shift and
  toony), with inverted-hull outlines of the material's outline width and colour: how VRoid Studio
  and VRM viewers show a model.
- `lit`: smooth diffuse shading from a key and a fill light, a specular highlight and a soft
  contact shadow under the feet: a plainly "3D render" look.
- `unlit`: base colour and texture only.
The light is fixed relative to the camera (upper left, in front), so every view is lit alike.

Not supported (the renderer's limits, stated in the README): MToon rim light, matcap, emission
textures, UV animation, outline width textures, normal maps; no hair or cloth physics (the rest
shape is drawn); transparent surfaces are sorted per primitive, not per triangle.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from sabun.avatar.camera import Camera
from sabun.avatar.pose import Posed
from sabun.avatar.types import CLAMP_TO_EDGE, Avatar, Material, TextureRef
from sabun.errors import SabunError

STYLES = ("toon", "lit", "unlit")
_STYLE_CODE = {"unlit": 0, "toon": 1, "lit": 2, "outline": 3, "shadow": 4}
_ALPHA_CODE = {"OPAQUE": 0, "MASK": 1, "BLEND": 2}
_SRGB8_ALPHA8 = 0x8C43
_FLOATS_PER_VERTEX = 14  # position 3, normal 3, uv0 2, uv1 2, colour 4

_VERTEX_SHADER = """
#version 330
uniform mat4 u_view_proj;
uniform vec3 u_eye;
uniform float u_outline_world;
uniform float u_outline_screen;
uniform float u_tan_half_fov;
in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv0;
in vec2 in_uv1;
in vec4 in_colour;
out vec3 v_normal;
out vec3 v_world;
out vec2 v_uv0;
out vec2 v_uv1;
out vec4 v_colour;
void main() {
    // outlines: the hull pushed out along the normal (zero for ordinary surfaces)
    float width = u_outline_world + u_outline_screen * length(u_eye - in_position) * 2.0 * u_tan_half_fov;
    vec3 p = in_position + in_normal * width;
    v_world = p;
    v_normal = in_normal;
    v_uv0 = in_uv0;
    v_uv1 = in_uv1;
    v_colour = in_colour;
    gl_Position = u_view_proj * vec4(p, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform int u_style;
uniform vec4 u_base;
uniform bool u_has_tex;
uniform sampler2D u_tex;
uniform mat3 u_tex_xf;
uniform int u_tex_coord;
uniform vec3 u_shade;
uniform bool u_has_shade_tex;
uniform sampler2D u_shade_tex;
uniform mat3 u_shade_xf;
uniform int u_shade_coord;
uniform bool u_mtoon;
uniform float u_shift;
uniform float u_toony;
uniform vec3 u_emissive;
uniform int u_alpha_mode;
uniform float u_cutoff;
uniform vec3 u_key;
uniform vec3 u_fill;
uniform vec3 u_eye;
uniform vec3 u_outline_colour;
uniform float u_outline_mix;
uniform vec3 u_ground;
uniform float u_shadow_radius;
uniform int u_mask;
in vec3 v_normal;
in vec3 v_world;
in vec2 v_uv0;
in vec2 v_uv1;
in vec4 v_colour;
out vec4 f_colour;

vec2 uv_of(int coord, mat3 xf) {
    vec2 uv = coord == 1 ? v_uv1 : v_uv0;
    return (xf * vec3(uv, 1.0)).xy;
}

void main() {
    if (u_style == 4) {  // contact shadow: a soft disc on the ground
        float r = length((v_world - u_ground).xz) / u_shadow_radius;
        float a = 0.45 * exp(-3.5 * r * r);
        f_colour = vec4(0.0, 0.0, 0.0, a);
        return;
    }
    vec4 base = u_base * v_colour;
    if (u_has_tex) base *= texture(u_tex, uv_of(u_tex_coord, u_tex_xf));
    if (u_alpha_mode == 1 && base.a < u_cutoff) discard;
    if (u_mask != 0) {  // material mask pass: 1 where a chosen material is the front-most surface
        f_colour = vec4(u_mask == 1 ? 1.0 : 0.0, 0.0, 0.0, 1.0);
        return;
    }
    float alpha = u_alpha_mode == 2 ? base.a : 1.0;
    vec3 n = normalize(v_normal);
    if (!gl_FrontFacing) n = -n;
    vec3 colour;
    if (u_style == 3) {
        colour = u_outline_colour * mix(1.0, 0.85, u_outline_mix);
    } else if (u_style == 0) {
        colour = base.rgb;
    } else if (u_style == 1) {
        vec3 shade = u_mtoon ? u_shade : base.rgb * 0.72;
        if (u_mtoon && u_has_shade_tex) shade *= texture(u_shade_tex, uv_of(u_shade_coord, u_shade_xf)).rgb;
        float shift = u_mtoon ? u_shift : 0.0;
        float toony = u_mtoon ? u_toony : 0.9;
        float s = dot(n, u_key) + shift;
        float lo = -1.0 + toony;
        float hi = 1.0 - toony;
        float t = clamp((s - lo) / max(hi - lo, 1e-4), 0.0, 1.0);
        colour = mix(shade, base.rgb, t);
    } else {
        vec3 v = normalize(u_eye - v_world);
        vec3 h = normalize(u_key + v);
        float key = max(dot(n, u_key), 0.0);
        float fill = max(dot(n, u_fill), 0.0);
        float sky = 0.5 + 0.5 * n.y;
        float spec = pow(max(dot(n, h), 0.0), 48.0) * (key > 0.0 ? 1.0 : 0.0);
        colour = base.rgb * (0.78 * key + 0.22 * fill + 0.12 + 0.14 * sky) + vec3(0.28 * spec);
    }
    colour += u_emissive;
    f_colour = vec4(colour * alpha, alpha);
}
"""


@functools.cache
def gl_context():
    """The process's one headless OpenGL 3.3+ context (EGL, no display needed)."""
    try:
        import moderngl

        ctx = moderngl.create_standalone_context(backend="egl", require=330)
    except Exception as e:  # moderngl/glcontext raise plain Exceptions when EGL is missing
        raise SabunError(
            f"sabun render needs OpenGL 3.3 through EGL, which could not start ({e}); install Mesa's EGL "
            "and software rasteriser (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)"
        ) from None
    return ctx


def _texture_matrix(ref: TextureRef | None) -> tuple[float, ...]:
    """KHR_texture_transform's T * R * S, column-major for a GLSL mat3."""
    if ref is None:
        return (1, 0, 0, 0, 1, 0, 0, 0, 1)
    c, s = math.cos(ref.rotation), math.sin(ref.rotation)
    (ox, oy), (sx, sy) = ref.offset, ref.scale
    m = (
        np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]])
        @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
        @ np.diag([sx, sy, 1])
    )
    return tuple(float(v) for v in m.T.flatten())


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


class Renderer:
    """One posed character, ready to draw from any camera."""

    def __init__(self, avatar: Avatar, posed: Posed, style: str = "toon", size: int = 768, supersample: int = 2):
        if style not in STYLES:
            raise SabunError(f"style {style!r} is not valid; choose one of: {', '.join(STYLES)}")
        import moderngl

        self.moderngl = moderngl
        self.avatar, self.posed, self.style = avatar, posed, style
        self.size, self.supersample = size, supersample
        self.ctx = ctx = gl_context()
        self.program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self.program["u_tex"].value = 0
        self.program["u_shade_tex"].value = 1
        self.program["u_mask"].value = 0
        self._resources = []
        self.textures = [self._upload_texture(i) for i in range(len(avatar.textures))]
        self.draws = [self._upload_primitive(p) for p in posed.primitives]
        self.ground = float(posed.vertices()[:, 1].min())
        self.shadow_vao, self.shadow_radius = self._shadow_quad()
        side = size * supersample
        self.fbo = ctx.framebuffer(
            color_attachments=[self._keep(ctx.renderbuffer((side, side), 4, samples=4, dtype="f2"))],
            depth_attachment=self._keep(ctx.depth_renderbuffer((side, side), samples=4)),
        )
        self.resolved = ctx.framebuffer(color_attachments=[self._keep(ctx.renderbuffer((side, side), 4, dtype="f4"))])
        self._resources += [self.fbo, self.resolved, self.program]
        self.mask_fbo = self.mask_resolved = None  # made on first use, at the output size

    def _keep(self, resource):
        self._resources.append(resource)
        return resource

    def release(self) -> None:
        """Free the GPU-side buffers (the context stays for the next character)."""
        for resource in reversed(self._resources):
            resource.release()
        self._resources = []

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _upload_texture(self, index: int):
        texture = self.avatar.textures[index]
        image = np.ascontiguousarray(texture.image, dtype=np.uint8)
        h, w = image.shape[:2]
        # glTF's UV origin is the image's top-left, and GL's first row is t = 0: upload rows as stored.
        tex = self._keep(self.ctx.texture((w, h), 4, image.tobytes(), internal_format=_SRGB8_ALPHA8))
        tex.repeat_x = texture.wrap_s != CLAMP_TO_EDGE
        tex.repeat_y = texture.wrap_t != CLAMP_TO_EDGE
        if texture.nearest:
            tex.filter = (self.moderngl.NEAREST, self.moderngl.NEAREST)
        else:
            tex.build_mipmaps()
            tex.filter = (self.moderngl.LINEAR_MIPMAP_LINEAR, self.moderngl.LINEAR)
            tex.anisotropy = 4.0
        return tex

    def _upload_primitive(self, posed_primitive) -> tuple:
        p = posed_primitive.primitive
        n = len(p.positions)

        def uv(k: int) -> np.ndarray:
            return p.texcoords[k] if len(p.texcoords) > k else np.zeros((n, 2), np.float32)

        colours = p.colours if p.colours is not None else np.ones((n, 4), np.float32)
        data = np.hstack([posed_primitive.positions, posed_primitive.normals, uv(0), uv(1), colours]).astype(np.float32)
        vbo = self._keep(self.ctx.buffer(data.tobytes()))
        ibo = self._keep(self.ctx.buffer(np.ascontiguousarray(p.indices, dtype=np.uint32).tobytes()))
        vao = self._keep(
            self.ctx.vertex_array(
                self.program,
                [(vbo, "3f 3f 2f 2f 4f", "in_position", "in_normal", "in_uv0", "in_uv1", "in_colour")],
                index_buffer=ibo,
                index_element_size=4,
            )
        )
        material = self.avatar.materials[p.material] if p.material is not None else Material()
        centre = posed_primitive.positions.mean(0) if n else np.zeros(3)
        return vao, material, centre

    def _shadow_quad(self):
        """A square on the ground under the character, for the contact shadow."""
        vertices = self.posed.vertices()
        # `<=`: the lowest vertex is always among them, even for a model with no height
        feet = vertices[vertices[:, 1] <= self.ground + 0.05 * (vertices[:, 1].max() - self.ground)]
        centre = feet.mean(0)
        radius = max(float(np.linalg.norm((feet - centre)[:, [0, 2]], axis=1).max()) * 1.6, 0.05)
        self.ground_centre = np.array([centre[0], self.ground, centre[2]])
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        rows = [
            [
                centre[0] + x * radius * 1.5,
                self.ground - 1e-4,
                centre[2] + z * radius * 1.5,
                0,
                1,
                0,
                0,
                0,
                0,
                0,
                1,
                1,
                1,
                1,
            ]
            for x, z in corners
        ]
        data = np.array([rows[i] for i in (0, 2, 1, 0, 3, 2)], dtype=np.float32)
        vbo = self._keep(self.ctx.buffer(data.tobytes()))
        vao = self._keep(
            self.ctx.vertex_array(
                self.program, [(vbo, "3f 3f 2f 2f 4f", "in_position", "in_normal", "in_uv0", "in_uv1", "in_colour")]
            )
        )
        return vao, radius

    def _set_material(self, material: Material, style: str) -> None:
        u = self.program
        u["u_style"].value = _STYLE_CODE[style if not (material.unlit and style != "outline") else "unlit"]
        u["u_base"].value = tuple(float(c) for c in material.base_colour)
        u["u_emissive"].value = tuple(float(c) for c in material.emissive)
        u["u_alpha_mode"].value = _ALPHA_CODE[material.alpha_mode]
        u["u_cutoff"].value = float(material.alpha_cutoff)
        self._bind("u_has_tex", "u_tex_xf", "u_tex_coord", 0, material.base_texture)
        mtoon = material.mtoon
        u["u_mtoon"].value = mtoon is not None
        if mtoon is not None:
            u["u_shade"].value = tuple(float(c) for c in mtoon.shade_colour)
            u["u_shift"].value = float(mtoon.shading_shift)
            u["u_toony"].value = float(mtoon.shading_toony)
            u["u_outline_colour"].value = tuple(float(c) for c in mtoon.outline_colour)
            u["u_outline_mix"].value = float(mtoon.outline_lighting_mix)
        self._bind("u_has_shade_tex", "u_shade_xf", "u_shade_coord", 1, mtoon.shade_texture if mtoon else None)

    def _bind(self, has: str, xf: str, coord: str, unit: int, ref: TextureRef | None) -> None:
        usable = ref is not None and 0 <= ref.texture < len(self.textures)
        self.program[has].value = usable
        self.program[xf].value = _texture_matrix(ref if usable else None)
        self.program[coord].value = ref.texcoord if usable else 0
        if usable:
            self.textures[ref.texture].use(unit)

    def _cull(self, double_sided: bool, front: bool = False) -> None:
        if double_sided:
            self.ctx.disable(self.moderngl.CULL_FACE)
        else:
            self.ctx.enable(self.moderngl.CULL_FACE)
            self.ctx.cull_face = "front" if front else "back"

    def draw(self, camera: Camera) -> np.ndarray:
        """One shot: (size, size, 4) float32, linear, premultiplied alpha, row 0 at the top."""
        mgl, ctx, u = self.moderngl, self.ctx, self.program
        self.fbo.use()
        ctx.viewport = (0, 0, self.size * self.supersample, self.size * self.supersample)
        ctx.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(mgl.DEPTH_TEST | mgl.BLEND)
        ctx.blend_func = (mgl.ONE, mgl.ONE_MINUS_SRC_ALPHA)  # premultiplied alpha
        view_inverse = np.linalg.inv(camera.view)
        right, up, back = view_inverse[:3, 0], view_inverse[:3, 1], view_inverse[:3, 2]
        key = -0.45 * right + 0.65 * up + 0.62 * back
        fill = 0.7 * right + 0.1 * up + 0.7 * back
        self._use_camera(camera)
        u["u_key"].value = tuple(float(c) for c in key / np.linalg.norm(key))
        u["u_fill"].value = tuple(float(c) for c in fill / np.linalg.norm(fill))
        self._outline(0.0, 0.0)

        if self.style == "lit":  # the shadow first: the feet then cover it
            u["u_style"].value = _STYLE_CODE["shadow"]
            u["u_ground"].value = tuple(float(c) for c in self.ground_centre)
            u["u_shadow_radius"].value = self.shadow_radius
            ctx.depth_mask = False
            self._cull(True)
            self.shadow_vao.render(mgl.TRIANGLES)
            ctx.depth_mask = True

        opaque = [i for i, draw in enumerate(self.draws) if draw[1].alpha_mode != "BLEND"]
        for i in opaque:
            vao, material, _ = self.draws[i]
            self._set_material(material, self.style)
            self._cull(material.double_sided)
            vao.render(mgl.TRIANGLES)
        if self.style == "toon":
            for i in opaque:
                self._draw_outline(i)
        # transparent parts last, far to near, without writing depth
        blend = [i for i, draw in enumerate(self.draws) if draw[1].alpha_mode == "BLEND"]
        blend.sort(key=lambda i: -float(np.linalg.norm(self.draws[i][2] - camera.eye)))
        ctx.depth_mask = False
        for i in blend:
            vao, material, _ = self.draws[i]
            self._set_material(material, self.style)
            self._cull(material.double_sided)
            vao.render(mgl.TRIANGLES)
        ctx.depth_mask = True
        ctx.copy_framebuffer(self.resolved, self.fbo)
        side = self.size * self.supersample
        pixels = np.frombuffer(self.resolved.read(components=4, dtype="f4"), dtype=np.float32).reshape(side, side, 4)
        pixels = pixels[::-1]  # GL's first row is the bottom one
        k = self.supersample
        return pixels.reshape(self.size, k, self.size, k, 4).mean(axis=(1, 3))

    def material_coverage(self, camera: Camera, materials: set[int]) -> np.ndarray:
        """(size, size) float32: the share of each output pixel where one of `materials` (indices
        into the avatar's materials) is the front-most surface (outlines and the shadow left out).

        Drawn at the output size with 4x MSAA (steps of 1/4), a single 8-bit channel: about a tenth
        of a shot's cost at 768 px."""
        mgl, ctx, u = self.moderngl, self.ctx, self.program
        if self.mask_fbo is None:
            size = (self.size, self.size)
            self.mask_fbo = self._keep(
                ctx.framebuffer(
                    color_attachments=[self._keep(ctx.renderbuffer(size, 1, samples=4, dtype="f1"))],
                    depth_attachment=self._keep(ctx.depth_renderbuffer(size, samples=4)),
                )
            )
            self.mask_resolved = self._keep(
                ctx.framebuffer(color_attachments=[self._keep(ctx.renderbuffer(size, 1, dtype="f1"))])
            )
        self.mask_fbo.use()
        ctx.viewport = (0, 0, self.size, self.size)
        ctx.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.BLEND)
        self._use_camera(camera)
        self._outline(0.0, 0.0)
        try:
            for i, (vao, material, _) in enumerate(self.draws):  # transparent parts too: they cover what is behind
                self._set_material(material, self.style)
                u["u_mask"].value = 1 if self.posed.primitives[i].primitive.material in materials else 2
                self._cull(material.double_sided)
                vao.render(mgl.TRIANGLES)
        finally:
            u["u_mask"].value = 0
        ctx.copy_framebuffer(self.mask_resolved, self.mask_fbo)
        mask = np.frombuffer(self.mask_resolved.read(components=1, dtype="f1"), dtype=np.uint8).reshape(
            self.size, self.size
        )[::-1]
        return mask.astype(np.float32) / 255.0

    def _use_camera(self, camera: Camera) -> None:
        u = self.program
        u["u_view_proj"].write((camera.projection @ camera.view).T.astype("f4").tobytes())
        u["u_eye"].value = tuple(float(c) for c in camera.eye)
        u["u_tan_half_fov"].value = math.tan(math.radians(camera.fov) / 2)

    def _outline(self, world: float, screen: float) -> None:
        self.program["u_outline_world"].value = world
        self.program["u_outline_screen"].value = screen

    def _draw_outline(self, i: int) -> None:
        vao, material, _ = self.draws[i]
        mtoon = material.mtoon
        if mtoon is None or mtoon.outline_mode == "none" or mtoon.outline_width <= 0:
            return
        self._set_material(material, "outline")
        if mtoon.outline_mode == "world":
            self._outline(float(mtoon.outline_width), 0.0)
        else:
            self._outline(0.0, float(mtoon.outline_width))
        self._cull(False, front=True)  # the inverted hull: only its inside faces show
        vao.render(self.moderngl.TRIANGLES)
        self._outline(0.0, 0.0)


_LUT_SIZE = 16384
# linear 0..1 -> sRGB uint8, by table: 16384 steps keep the darkest tones within a fifth of a level of
# the exact curve, and a lookup is ~5x faster than the power function on every pixel.
_SRGB_LUT = np.round(linear_to_srgb(np.linspace(0.0, 1.0, _LUT_SIZE)) * 255.0).astype(np.uint8)


def _to_srgb8(linear: np.ndarray) -> np.ndarray:
    index = np.clip(linear, 0.0, 1.0) * (_LUT_SIZE - 1) + 0.5
    return _SRGB_LUT[index.astype(np.int32)]


def composite(pixels: np.ndarray, background: tuple[float, float, float] | None) -> np.ndarray:
    """Premultiplied linear RGBA -> uint8 sRGB: RGB over a background (sRGB 0..1), or RGBA if None."""
    alpha = np.clip(pixels[..., 3:4], 0.0, 1.0)
    if background is None:
        straight = np.where(alpha > 1e-6, pixels[..., :3] / np.maximum(alpha, 1e-6), 0.0)
        return np.concatenate([_to_srgb8(straight), np.round(alpha * 255.0).astype(np.uint8)], axis=-1)
    bg = _srgb_to_linear(np.asarray(background, dtype=np.float32)).astype(np.float32)
    return _to_srgb8(pixels[..., :3] + bg * (1.0 - alpha))
