/* Decoding only a crop's region of a JPEG with libjpeg-turbo (issue 36): the rows above the box
 * are skipped (entropy-decoded, not transformed), the columns outside it are left out
 * (jpeg_crop_scanline, to the nearest iMCU boundary on the left), and decoding stops after the
 * box's last row. A training view's random-resized crop covers about half the image on average,
 * so this skips most of the IDCT, upsampling and colour conversion of what a whole decode does
 * (benchmarks/streaming.py). No maintained wheel exposes this: simplejpeg hides libjpeg-turbo's
 * symbols, Pillow never calls jpeg_crop_scanline, and Debian 12's TurboJPEG (2.1.5) has no
 * tj3SetCroppingRegion. Built by setup.py when a C compiler and libjpeg-turbo's headers are
 * there (Debian: libjpeg62-turbo-dev); data/decode.py falls back to simplejpeg without it.
 *
 * crop(data, channels, eighths, x0, y0, x1, y1) -> (pixels, rows, width, left)
 *   data: the JPEG's bytes; channels: 1 (grey) or 3 (RGB); eighths: the DCT scale in eighths
 *   (1 to 8, as simplejpeg's scaling factors M/8); x0, y0, x1, y1: the box in the scaled
 *   image's pixels (x1, y1 exclusive).
 *   pixels: a bytearray of rows x width x channels, the scaled image's rows y0..y1 and columns
 *   left..left+width (left <= x0, left + width >= x1), decoded as simplejpeg does with
 *   fastdct=True, fastupsample=True. Any libjpeg error or warning (corrupt or truncated data)
 *   raises ValueError with libjpeg's message. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void fail(j_common_ptr cinfo) {
    struct error_manager *err = (struct error_manager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

/* a warning (level -1: corrupt data, a premature end) fails like an error, as simplejpeg's
 * decoder does: a view of half-decoded pixels is not an image */
static void emit(j_common_ptr cinfo, int level) {
    if (level < 0)
        fail(cinfo);
}

static PyObject *crop(PyObject *self, PyObject *args) {
    Py_buffer data;
    int channels, eighths, x0, y0, x1, y1;
    if (!PyArg_ParseTuple(args, "y*iiiiii", &data, &channels, &eighths, &x0, &y0, &x1, &y1))
        return NULL;
    if ((channels != 1 && channels != 3) || eighths < 1 || eighths > 8
        || x0 < 0 || y0 < 0 || x1 <= x0 || y1 <= y0) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "crop: bad channels, scale or box");
        return NULL;
    }
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    PyObject *volatile pixels = NULL;
    memset(&cinfo, 0, sizeof cinfo); /* jpeg_destroy_decompress is safe on it from here on */
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = fail;
    err.pub.emit_message = emit;
    if (setjmp(err.jump)) { /* set before jpeg_create_decompress, which may fail too */
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        Py_XDECREF(pixels);
        PyErr_SetString(PyExc_ValueError, err.message);
        return NULL;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
    cinfo.scale_num = eighths;
    cinfo.scale_denom = 8;
    cinfo.dct_method = JDCT_IFAST;
    cinfo.do_fancy_upsampling = FALSE;
    jpeg_start_decompress(&cinfo);
    if ((JDIMENSION)x1 > cinfo.output_width || (JDIMENSION)y1 > cinfo.output_height) {
        snprintf(err.message, sizeof err.message, "crop: box (%d, %d, %d, %d) outside %u x %u",
                 x0, y0, x1, y1, cinfo.output_width, cinfo.output_height);
        longjmp(err.jump, 1);
    }
    JDIMENSION left = x0, width = x1 - x0;
    jpeg_crop_scanline(&cinfo, &left, &width);
    if (y0 > 0 && jpeg_skip_scanlines(&cinfo, y0) != (JDIMENSION)y0) {
        snprintf(err.message, sizeof err.message, "crop: could not skip to row %d", y0);
        longjmp(err.jump, 1);
    }
    size_t stride = (size_t)width * channels, rows = y1 - y0;
    pixels = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(stride * rows));
    if (pixels == NULL) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(pixels);
    for (size_t got = 0; got < rows;) {
        JSAMPROW row = out + got * stride;
        JDIMENSION n = jpeg_read_scanlines(&cinfo, &row, 1);
        if (n == 0) {
            snprintf(err.message, sizeof err.message, "crop: no data at row %zu", y0 + got);
            longjmp(err.jump, 1);
        }
        got += n;
    }
    jpeg_abort_decompress(&cinfo); /* the rows below the box are not needed */
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    PyObject *result = Py_BuildValue("Onnn", pixels, (Py_ssize_t)rows, (Py_ssize_t)width,
                                     (Py_ssize_t)left);
    Py_DECREF(pixels);
    return result;
}

static PyMethodDef methods[] = {
    {"crop", crop, METH_VARARGS, "The box of a JPEG at DCT scale eighths/8: (pixels, rows, width, left)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg_region", "A JPEG's crop decoded alone (libjpeg-turbo).", -1, methods,
};

PyMODINIT_FUNC PyInit__jpeg_region(void) { return PyModule_Create(&module); }
