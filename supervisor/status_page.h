/* The admin port's status page (status_page.c), served by admin.c at GET /. */
#ifndef STATUS_PAGE_H
#define STATUS_PAGE_H

extern const char status_page_html[];

#endif
